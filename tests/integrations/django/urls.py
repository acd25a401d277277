"""The example's URLs (orders, sagaz/health) plus test-only views."""

from __future__ import annotations

from django.urls import include, path

from tests.integrations.django import views

urlpatterns = [
    path("", include("orders.urls")),
    path("sagaz/", include("sagaz.integrations.django.urls")),
    path("test/async-order", views.async_order),
    path("test/async-direct", views.async_direct),
    path("test/no-atomic", views.no_atomic),
    path("test/run", views.run),
    path("test/correlation", views.correlation),
]
