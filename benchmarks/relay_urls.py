"""Service B's URLs in the relay benchmark: the http source view (README, Several services)."""

from django.urls import include, path

urlpatterns = [path("eventbus/", include("eventbus_app.relay.urls"))]
