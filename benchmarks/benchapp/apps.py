from django.apps import AppConfig


class BenchAppConfig(AppConfig):
    name = "benchmarks.benchapp"
    label = "benchapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        if "django_domain_events" in settings.INSTALLED_APPS:
            from . import peer  # noqa: F401  (registers the peer's receivers)
