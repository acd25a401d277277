"""`run_saga` of a slow saga while a worker polls Django's database with a short lease:
the worker never runs it and each step runs exactly once (the run is journaled in
memory, so no worker can even see it). The other adapters: test_in_process_runs_hold_a_lease."""

from __future__ import annotations

import pytest

from sagaz import SagaStatus
from sagaz.integrations.django import run_saga
from sagaz.integrations.django.conf import database_url
from tests.integrations.integration_helpers import SlowLeaseSaga, polling_worker, slow_effects


@pytest.mark.django_db(transaction=True)
def test_run_saga_is_never_run_by_a_polling_worker() -> None:
    slow_effects.clear()
    with polling_worker(database_url("default")) as worker:
        result = run_saga(SlowLeaseSaga, {"n": "django"})
    assert result.status is SagaStatus.COMPLETED
    assert slow_effects == [("django", "first"), ("django", "second")]
    assert worker.completed == 0
