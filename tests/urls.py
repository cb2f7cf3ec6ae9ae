"""The admin plus the demo project's pages (tests/test_demo.py, tests/browser/), and the
reliability suite's sign-up view."""

from django.urls import path

from demo_project.urls import urlpatterns as demo_urlpatterns
from tests.reliability.views import signup

urlpatterns = [
    *demo_urlpatterns,
    path("reliability/signup/", signup, name="reliability-signup"),
]
