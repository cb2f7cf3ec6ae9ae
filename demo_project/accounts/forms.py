from __future__ import annotations

from django import forms
from django.contrib.auth.models import User


class SignupForm(forms.Form):
    username = forms.SlugField(max_length=30)
    name = forms.CharField(max_length=60)
    email = forms.EmailField()
    password = forms.CharField(widget=forms.PasswordInput, min_length=4)

    def clean_username(self) -> str:
        username: str = self.cleaned_data["username"]
        if User.objects.filter(username=username).exists():
            raise forms.ValidationError("That username is taken.")
        return username


class ProfileForm(forms.Form):
    name = forms.CharField(max_length=60)
    email = forms.EmailField()
