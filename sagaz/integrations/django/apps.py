"""The Django app: ``INSTALLED_APPS += ["sagaz.integrations.django"]``."""

from __future__ import annotations

from django.apps import AppConfig

from sagaz.integrations.django.conf import get_settings, import_saga_modules


class SagazConfig(AppConfig):
    """Validates ``settings.SAGAZ`` (ImproperlyConfigured for a bad value) and imports
    the modules that define sagas (each app's ``sagas`` module, and SAGAZ["IMPORTS"]) so
    they are registered before the first request or worker claim. Its migrations create
    sagaz's tables (app label ``sagaz``: ``manage.py migrate sagaz``)."""

    name = "sagaz.integrations.django"
    label = "sagaz"
    verbose_name = "sagaz"

    def ready(self) -> None:
        import_saga_modules(get_settings())
