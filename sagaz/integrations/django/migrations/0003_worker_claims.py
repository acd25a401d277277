"""The give-up rule counts claims without progress: Alembic revision 0003_worker_claims."""

from __future__ import annotations

from django.db import migrations

from sagaz.integrations.django.operations import AlembicRevision


class Migration(migrations.Migration):
    dependencies = (("sagaz", "0002_json_text"),)
    operations = (AlembicRevision("0003_worker_claims", down_revision="0002_json_text"),)
