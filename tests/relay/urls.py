"""The http source's URLs, as a project includes them (README, Several services)."""

from django.urls import include, path

urlpatterns = [path("eventbus/", include("eventbus_app.relay.urls"))]
