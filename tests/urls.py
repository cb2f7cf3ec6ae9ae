"""The admin plus the demo project's pages (tests/test_demo.py, tests/browser/)."""

from demo_project.urls import urlpatterns

__all__ = ["urlpatterns"]
