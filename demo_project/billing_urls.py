"""Billing's URLconf (``billing_settings.ROOT_URLCONF``)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # The http source: the shop's relay POSTs each event to /eventbus/shop/.
    path("eventbus/", include("eventbus_app.relay.urls")),
    path("", include("demo_project.billing.urls")),
]
