"""`flask sagaz worker` runs with the app's own settings: a step setting given only in
app.config (max retries) reaches it. No SAGAZ_* variable is set for it; with the default
max_retries=0 the saga's first failure would be final."""

from __future__ import annotations

import sys
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sagaz import start_saga
from tests.conftest import DatabaseUrls
from tests.integrations.settings_sagas import FlakySaga
from tests.integrations.worker_process import ROOT, clean_environment, run_until_done

pytestmark = pytest.mark.postgres


def start_flaky(engine: sa.Engine, fail_times: int) -> str:
    with Session(engine) as session:
        saga_id = start_saga(
            session, FlakySaga, {"key": uuid.uuid4().hex, "fail_times": fail_times}
        )
        session.commit()
    return saga_id


@pytest.mark.parametrize(
    ("fail_times", "outcome"), [(2, ("completed", 3)), (3, ("compensated", 3))]
)
def test_flask_sagaz_worker_retries_as_app_config_says(
    app_db: DatabaseUrls, sync_db: sa.Engine, fail_times: int, outcome: tuple[str, int]
) -> None:
    saga_id = start_flaky(sync_db, fail_times)
    argv = [
        sys.executable,
        "-m",
        "flask",
        "--app",
        "tests.integrations.settings_flask_app:create_app",
        "sagaz",
        "worker",
        "--no-outbox",
        "--poll-interval",
        "0.2",
        "--import",
        "tests.integrations.settings_sagas",
    ]
    env = clean_environment({"SETTINGS_TEST_DATABASE_URL": app_db.url})
    assert run_until_done(argv, cwd=ROOT, env=env, engine=sync_db, saga_id=saga_id) == outcome
