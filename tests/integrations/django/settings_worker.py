"""Settings of the example project for `manage.py sagaz_worker` in
test_django_worker_settings.py: retry settings only in settings.SAGAZ."""

from orders_site.settings import *  # noqa: F403
from orders_site.settings import SAGAZ as EXAMPLE_SAGAZ

SAGAZ = {
    **EXAMPLE_SAGAZ,
    "MAX_RETRIES": 2,
    "RETRY_BACKOFF": 0,
    "LEASE_SECONDS": 2,
    "IMPORTS": ["tests.integrations.settings_sagas"],
}
