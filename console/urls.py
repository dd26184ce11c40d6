"""The tenant's routes: the home page, signing in, the key page, and the API of users, keys,
quotas, budgets and usage."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from console import views
from console.authentication import login_page_throttled

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", login_page_throttled(auth_views.LoginView.as_view()), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/login/", login_page_throttled(admin.site.login)),
    path("keys/", include("console.keys.urls")),
    path("api/v1/", include("console.api.urls")),
]
