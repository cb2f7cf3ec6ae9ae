from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "demo_project.orders"
    label = "orders"
    verbose_name = "Demo: orders"

    def ready(self) -> None:
        from . import receivers  # noqa: F401 (connects the post_save receiver)
