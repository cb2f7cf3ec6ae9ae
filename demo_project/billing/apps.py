from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "demo_project.billing"
    label = "billing"
    verbose_name = "Billing: accounts and ledger"
