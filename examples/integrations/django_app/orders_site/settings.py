"""Settings of the order service example.

The database comes from DATABASE_URL (``postgresql://user:password@host/name`` or
``sqlite:///path``); without it, a SQLite file in the system's temporary directory.
"""

import os
import tempfile
from pathlib import Path

from sagaz.integrations.django.conf import database_from_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sagaz-example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = [
    "sagaz.integrations.django",  # sagaz's tables (migrate), settings, commands
    "orders",
]
MIDDLEWARE = [
    "sagaz.integrations.django.middleware.SagaContextMiddleware",
]
ROOT_URLCONF = "orders_site.urls"
WSGI_APPLICATION = "orders_site.wsgi.application"

DEFAULT_SQLITE = Path(tempfile.gettempdir()) / "sagaz-django-orders.sqlite3"
DATABASES = {
    "default": {
        **database_from_url(os.environ.get("DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE}"),
        # Each view runs in one transaction: the order, its saga and its outbox event
        # commit together, or not at all.
        "ATOMIC_REQUESTS": True,
    }
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A worker writes to the same file: take the write lock when a transaction starts
    # (no "database is locked" half-way) and let readers run beside the writer.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
        "timeout": 30,
    }
    # `manage.py test` uses a database file too (not Django's in-memory default), so
    # the health view and a worker can open it.
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"sagaz-django-orders-test-{os.getpid()}.sqlite3")
    }

SAGAZ = {
    "LEASE_SECONDS": float(os.environ.get("SAGAZ_LEASE_SECONDS", "30")),
}

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"orders": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
