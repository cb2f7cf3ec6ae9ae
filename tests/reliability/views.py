from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from eventbus_app import emit
from tests.testapp.models import Account

from .events import SignedUp


@csrf_exempt
@require_POST
def signup(request: HttpRequest) -> HttpResponse:
    email = request.POST["email"]
    with transaction.atomic():
        account = Account.objects.create(email=email)
        emit(SignedUp(account_id=account.pk, email=email))
    return JsonResponse({"account": account.pk}, status=201)
