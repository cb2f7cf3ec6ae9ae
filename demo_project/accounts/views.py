from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from eventbus_app.models import OutboxEvent

from .forms import ProfileForm, SignupForm
from .models import PaymentCustomer
from .services import change_email, rebuild_user, register_user, rename_user, user_history


def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = register_user(**form.cleaned_data)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(
            request,
            "Welcome! Your account is saved; its four side effects now run in the background.",
        )
        return redirect("accounts:profile", user_id=user.pk)
    return render(request, "accounts/signup.html", {"form": form})


def profile(request: HttpRequest, user_id: int) -> HttpResponse:
    user = get_object_or_404(User, pk=user_id)
    can_edit = request.user.is_authenticated and (
        request.user.pk == user.pk or request.user.is_staff
    )
    form = ProfileForm(request.POST or None, initial={"name": user.first_name, "email": user.email})
    if request.method == "POST":
        if not can_edit:
            return HttpResponse("Log in as this user to edit the profile.", status=403)
        if form.is_valid():
            if form.cleaned_data["name"] != user.first_name:
                rename_user(user, form.cleaned_data["name"])
            if form.cleaned_data["email"] != user.email:
                change_email(user, form.cleaned_data["email"])
            messages.success(request, "Saved: each change is a new event in the history.")
            return redirect("accounts:profile", user_id=user.pk)
    history = user_history(user.pk)
    state = rebuild_user(user.pk)
    as_of = request.GET.get("version", "")
    then = rebuild_user(user.pk, version=int(as_of)) if as_of.isdigit() else None
    registered = OutboxEvent.objects.filter(
        event_type="accounts.UserRegistered", payload__user_id=user.pk
    ).first()
    return render(
        request,
        "accounts/profile.html",
        {
            "profile_user": user,
            "state": state,
            "history": list(reversed(history)),
            "then": then,
            "matches": state.name == user.first_name and state.email == user.email,
            "form": form,
            "can_edit": can_edit,
            "registered": registered,
            "deliveries": registered.deliveries.order_by("handler") if registered else [],
            "customer": PaymentCustomer.objects.filter(user=user).first(),
        },
    )


@login_required
def me(request: HttpRequest) -> HttpResponse:
    return redirect("accounts:profile", user_id=request.user.pk)
