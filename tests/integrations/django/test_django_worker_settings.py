"""`manage.py sagaz_worker` runs with settings.SAGAZ's config: a step setting given only
there (max retries) reaches the worker. No SAGAZ_* variable is set for it; with the
default max_retries=0 the saga's first failure would be final."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sagaz import start_saga
from sagaz.integrations.django.conf import database_url
from sagaz.store.engines import create_engine
from tests.integrations.django.conftest import EXAMPLE
from tests.integrations.settings_sagas import FlakySaga
from tests.integrations.worker_process import clean_environment, run_until_done


@pytest.fixture
def engine() -> Iterator[sa.Engine]:
    engine = create_engine(database_url("default"), poolclass=sa.NullPool)
    yield engine
    engine.dispose()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("fail_times", "outcome"), [(2, ("completed", 3)), (3, ("compensated", 3))]
)
def test_sagaz_worker_retries_as_settings_say(
    engine: sa.Engine, fail_times: int, outcome: tuple[str, int]
) -> None:
    with Session(engine) as session:
        saga_id = start_saga(
            session, FlakySaga, {"key": uuid.uuid4().hex, "fail_times": fail_times}
        )
        session.commit()
    env = clean_environment(
        {
            "PYTHONPATH": str(EXAMPLE),
            "DJANGO_SETTINGS_MODULE": "tests.integrations.django.settings_worker",
            "DATABASE_URL": database_url("default"),
        }
    )
    argv = [sys.executable, "manage.py", "sagaz_worker", "--no-outbox", "--poll-interval", "0.2"]
    assert run_until_done(argv, cwd=EXAMPLE, env=env, engine=engine, saga_id=saga_id) == outcome
