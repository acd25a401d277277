"""Fixtures of the worker-process tests: a test module names the module its worker
subprocesses import (`WORKER_MODULE`) and the metadata of its application tables
(`APP_METADATA`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.conftest import DatabaseUrls
from tests.worker.worker_processes import WorkerProcesses


@pytest.fixture
def workers(pg: DatabaseUrls, request: pytest.FixtureRequest) -> Iterator[WorkerProcesses]:
    """`sagaz worker` subprocesses on `pg`, every one killed afterwards."""
    group = WorkerProcesses(pg.url, request.module.WORKER_MODULE)
    try:
        yield group
    finally:
        group.kill_all()


@pytest.fixture
def engine(pg: DatabaseUrls, request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    """A sync engine on `pg` with the test module's application tables."""
    engine = pg.sync_engine()
    request.module.APP_METADATA.create_all(engine)
    yield engine
    engine.dispose()
