"""``path("sagaz/", include("sagaz.integrations.django.urls"))`` serves ``sagaz/health``."""

from __future__ import annotations

from django.urls import path

from sagaz.integrations.django.views import health

app_name = "sagaz"
urlpatterns = [path("health", health, name="health")]
