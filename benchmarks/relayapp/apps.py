from django.apps import AppConfig


class RelayBenchConfig(AppConfig):
    name = "benchmarks.relayapp"
    label = "relaybench"
    default_auto_field = "django.db.models.BigAutoField"
