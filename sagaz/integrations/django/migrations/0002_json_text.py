"""JSON documents as text (PostgreSQL ``json``): Alembic revision 0002_json_text."""

from __future__ import annotations

from django.db import migrations

from sagaz.integrations.django.operations import AlembicRevision


class Migration(migrations.Migration):
    dependencies = (("sagaz", "0001_initial"),)
    operations = (AlembicRevision("0002_json_text", down_revision="0001_initial"),)
