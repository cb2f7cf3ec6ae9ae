from django.urls import include, path

from ..accounts import views as accounts
from ..orders import views as orders
from . import views

accounts_urls = (
    [
        path("signup/", accounts.signup, name="signup"),
        path("me/", accounts.me, name="me"),
        path("users/<int:user_id>/", accounts.profile, name="profile"),
    ],
    "accounts",
)
orders_urls = (
    [
        path("", orders.order_create, name="order_create"),
        path("<uuid:order_id>/", orders.order_detail, name="order"),
        path("<uuid:order_id>/ship/", orders.order_ship, name="order_ship"),
        path("<uuid:order_id>/refund/", orders.order_refund, name="order_refund"),
    ],
    "orders",
)
demo_urls = (
    [
        path("", views.home, name="home"),
        path("services/", views.set_service, name="set_service"),
        path("mailbox/", views.mailbox, name="mailbox"),
    ],
    "demo",
)

urlpatterns = [
    path("", include(demo_urls)),
    path("accounts/", include(accounts_urls)),
    path("orders/", include(orders_urls)),
]
