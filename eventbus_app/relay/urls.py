"""``path("eventbus/", include("eventbus_app.relay.urls"))``: the http sources' URLs."""

from django.urls import path

from . import views

app_name = "eventbus_relay"
urlpatterns = [path("<str:source>/", views.inbox, name="inbox")]
