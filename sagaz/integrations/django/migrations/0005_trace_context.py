"""The trace context of the request that started a saga: Alembic revision 0005_trace_context."""

from __future__ import annotations

from django.db import migrations

from sagaz.integrations.django.operations import AlembicRevision


class Migration(migrations.Migration):
    dependencies = (("sagaz", "0004_cancel_requests"),)
    operations = (AlembicRevision("0005_trace_context", down_revision="0004_cancel_requests"),)
