"""sagaz.integrations._base, shared by every adapter: correlation-id validation, the
commit/rollback policy (on real PostgreSQL), the event-loop portal, the health payload."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from sagaz import SagaContextManager, outbox, start_saga
from sagaz.config import SagaConfig
from sagaz.context import current_correlation_id
from sagaz.errors import ConfigurationError
from sagaz.integrations._base import (
    COMMIT_FAILED_NOTE,
    MAX_CORRELATION_ID_LENGTH,
    EventLoopPortal,
    HealthReport,
    LazyPortal,
    SagaRuntime,
    check_health,
    check_health_sync,
    correlation_id_from,
    finish_session,
    finish_session_sync,
    is_valid_correlation_id,
    validate_header_name,
)
from sagaz.store.engines import create_async_engine, create_engine
from tests.conftest import DatabaseUrls
from tests.integrations.integration_helpers import (
    IntegrationOrderSaga,
    counts,
    order_lines,
    orders,
    pg_connections,
    settled_pg_connections,
)

FRESH = re.compile(r"[0-9a-f]{32}")

# -- correlation ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "req-1", "A.b_c:d-e", "0" * MAX_CORRELATION_ID_LENGTH, "f47ac10b-58cc-4372-a567"],
)
def test_valid_correlation_ids_are_kept(value: str) -> None:
    assert is_valid_correlation_id(value)
    assert correlation_id_from(value) == value
    assert correlation_id_from(value.encode("latin-1")) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "0" * (MAX_CORRELATION_ID_LENGTH + 1),
        "abc\r\nX-Injected: 1",
        "abc\n",
        "tab\there",
        "caf\u00e9",
        "\u0661\u0662",  # Arabic-Indic digits: "digits", but not ASCII
        "a b",
        "a/b",
        b"\xff\xfe",
        b"abc\r\n",
    ],
)
def test_anything_else_is_replaced_by_a_fresh_id(value: str | bytes | None) -> None:
    assert not is_valid_correlation_id(value)
    fresh = correlation_id_from(value)
    assert FRESH.fullmatch(fresh)
    assert fresh != correlation_id_from(value)  # fresh every time


@pytest.mark.parametrize("value", ["X-Correlation-ID", "x-request-id", "Trace-1", "A"])
def test_a_header_name_of_letters_digits_and_dashes_is_accepted(value: str) -> None:
    assert validate_header_name(value, setting="header") == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"X-Request-ID",  # bytes are not a setting's str
        "",
        "X Request",
        "X-Request-ID\r\nSet-Cookie: a=b",
        "X-Request-ID\n",
        "x:y",
        "X_Request",
        "X-K\u00fcrzel",
        "\uff38-Id",  # a fullwidth letter
        42,
    ],
)
def test_anything_else_is_refused_naming_the_setting(value: object) -> None:
    with pytest.raises(ConfigurationError) as refused:
        validate_header_name(value, setting="SAGAZ_CORRELATION_HEADER")
    assert str(refused.value) == (
        f"SAGAZ_CORRELATION_HEADER must be a header name such as X-Request-ID, got {value!r}"
    )
    assert isinstance(refused.value, ValueError)


def test_a_refused_header_name_raises_the_callers_error_type() -> None:
    class SettingsError(Exception):
        pass

    with pytest.raises(SettingsError, match=r"^settings\['H'\] must be a header name"):
        validate_header_name("a b", setting="settings['H']", error=SettingsError)


# -- the commit/rollback policy -------------------------------------------------------------


def unit_of_work(session: Session | AsyncSession) -> None:
    start_saga(session, IntegrationOrderSaga, {"n": 1})
    outbox.add(session, "orders.created", {"n": 1})


@pytest.fixture
async def async_engine(app_db: DatabaseUrls) -> AsyncIterator[AsyncEngine]:
    engine = app_db.async_engine()
    yield engine
    await engine.dispose()


@pytest.mark.postgres
async def test_finish_session_commits_when_the_handler_returned(
    async_engine: AsyncEngine, sync_db: sa.Engine
) -> None:
    session = AsyncSession(async_engine)
    await session.execute(sa.insert(orders).values(item="x"))
    unit_of_work(session)
    await finish_session(session)
    assert counts(sync_db) == (1, 1, 1)
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.postgres
async def test_finish_session_rolls_back_when_the_handler_raised(
    async_engine: AsyncEngine, sync_db: sa.Engine
) -> None:
    session = AsyncSession(async_engine)
    await session.execute(sa.insert(orders).values(item="x"))
    unit_of_work(session)
    await finish_session(session, RuntimeError("handler failed"))
    assert counts(sync_db) == (0, 0, 0)
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.postgres
async def test_a_failed_commit_is_rolled_back_and_raised_with_a_note(
    async_engine: AsyncEngine, sync_db: sa.Engine
) -> None:
    session = AsyncSession(async_engine)
    await session.execute(sa.insert(orders).values(item="x"))
    await session.execute(sa.insert(order_lines).values(order_id=123456))  # deferred FK
    unit_of_work(session)
    with pytest.raises(sa.exc.IntegrityError) as raised:
        await finish_session(session)
    assert COMMIT_FAILED_NOTE in raised.value.__notes__
    assert counts(sync_db) == (0, 0, 0)
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.postgres
def test_the_sync_policy_is_the_same(app_db: DatabaseUrls, sync_db: sa.Engine) -> None:
    pooled = app_db.sync_engine()
    session = Session(pooled)
    session.execute(sa.insert(orders).values(item="x"))
    unit_of_work(session)
    finish_session_sync(session)
    assert counts(sync_db) == (1, 1, 1)

    session = Session(pooled)
    unit_of_work(session)
    finish_session_sync(session, ValueError("handler failed"))
    assert counts(sync_db) == (1, 1, 1)

    session = Session(pooled)
    session.execute(sa.insert(order_lines).values(order_id=123456))
    unit_of_work(session)
    with pytest.raises(sa.exc.IntegrityError) as raised:
        finish_session_sync(session)
    assert COMMIT_FAILED_NOTE in raised.value.__notes__
    assert counts(sync_db) == (1, 1, 1)
    assert pooled.pool.checkedout() == 0  # type: ignore[attr-defined]
    pooled.dispose()


class BrokenClose(Session):
    def close(self) -> None:
        super().close()
        raise OSError("close failed")


@pytest.mark.postgres
def test_a_failing_close_is_logged_and_never_hides_the_outcome(
    sync_db: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sagaz.integrations"):
        finish_session_sync(BrokenClose(sync_db))
        with pytest.raises(KeyError):
            try:
                raise KeyError("handler")
            except KeyError as error:
                finish_session_sync(BrokenClose(sync_db), error)
                raise
    assert "closing the request's session failed" in caplog.text


# -- the event-loop portal ------------------------------------------------------------------


@pytest.fixture
def portal() -> Iterator[EventLoopPortal]:
    portal = EventLoopPortal("sagaz-test-portal")
    yield portal
    portal.close()


async def double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


def test_call_runs_a_coroutine_on_one_long_lived_loop(portal: EventLoopPortal) -> None:
    async def which_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert portal.call(double, 21) == 42
    assert portal.call(which_loop) is portal.call(which_loop) is portal.loop
    assert portal.running


def test_exceptions_propagate_to_the_caller(portal: EventLoopPortal) -> None:
    async def fail() -> None:
        raise LookupError("from the loop")

    with pytest.raises(LookupError, match="from the loop"):
        portal.call(fail)
    assert portal.call(double, 1) == 2  # the loop survives


def test_context_variables_travel_with_the_call(portal: EventLoopPortal) -> None:
    async def seen() -> str | None:
        return current_correlation_id()

    with SagaContextManager.scope("req-7"):
        assert portal.call(seen) == "req-7"
    assert portal.call(seen) is None


def test_many_threads_at_once(portal: EventLoopPortal) -> None:
    async def slow(value: int) -> int:
        await asyncio.sleep(0.01)
        return value

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: portal.call(slow, n), range(200)))
    assert results == list(range(200))


def test_callable_from_a_thread_whose_own_loop_is_running(portal: EventLoopPortal) -> None:
    async def main() -> int:
        return portal.call(double, 4)  # blocks this loop, but works

    assert asyncio.run(main()) == 8


def test_calling_from_the_portals_own_loop_is_refused(portal: EventLoopPortal) -> None:
    async def nested() -> int:
        return portal.call(double, 1)

    with pytest.raises(RuntimeError, match="wait for itself"):
        portal.call(nested)


def test_an_interrupted_caller_cancels_the_coroutine() -> None:
    # Ctrl-C reaches the main thread only: run it in a fresh interpreter, not in pytest's.
    script = textwrap.dedent(
        """
        import asyncio, os, signal, threading
        from sagaz.integrations._base import EventLoopPortal

        portal = EventLoopPortal()
        cancelled = threading.Event()

        async def forever():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            portal.call(forever)
        except KeyboardInterrupt:
            print("interrupted; coroutine cancelled:", cancelled.wait(5))
        portal.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "interrupted; coroutine cancelled: True"


def test_close_cancels_leftovers_joins_the_thread_and_is_final() -> None:
    before = threading.active_count()
    portal = EventLoopPortal()
    cancelled = threading.Event()

    async def leftover() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def spawn() -> None:
        asyncio.get_running_loop().create_task(leftover())

    portal.call(spawn)
    assert threading.active_count() == before + 1
    loop = portal.loop
    portal.close()
    portal.close()  # idempotent
    assert cancelled.is_set()
    assert threading.active_count() == before
    assert loop.is_closed()
    with pytest.raises(RuntimeError, match="closed"):
        portal.call(double, 1)
    EventLoopPortal().close()  # never started: nothing to do


@pytest.mark.postgres
def test_an_async_pool_stays_valid_across_calls_and_leaks_nothing(
    app_db: DatabaseUrls, admin: sa.Engine
) -> None:
    portal = EventLoopPortal()
    engine = portal.call(_make_engine, app_db.url)

    async def read() -> int:
        async with engine.connect() as connection:
            return int(await connection.scalar(sa.text("SELECT 1")) or 0)

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(lambda _: portal.call(read), range(100))) == 100
    assert 1 <= pg_connections(admin, str(app_db.application_name)) <= 8
    portal.call(engine.dispose)
    portal.close()
    assert settled_pg_connections(admin, str(app_db.application_name), 0) == 0


async def _make_engine(url: str) -> AsyncEngine:
    return create_async_engine(url)


def test_the_portal_copies_the_callers_context_not_shares_it(portal: EventLoopPortal) -> None:
    variable: contextvars.ContextVar[int] = contextvars.ContextVar("n", default=0)

    async def bump() -> int:
        variable.set(variable.get() + 1)
        return variable.get()

    variable.set(10)
    assert portal.call(bump) == 11
    assert variable.get() == 10  # the caller's context is untouched


def named_threads(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


def test_a_lazy_portal_starts_on_first_use_and_anew_after_close() -> None:
    lazy = LazyPortal("sagaz-test-lazy")
    assert named_threads("sagaz-test-lazy") == []  # nothing before the first call
    assert lazy.call(double, 2) == 4
    first = lazy.portal
    assert lazy.portal is first  # one portal until closed
    assert len(named_threads("sagaz-test-lazy")) == 1
    lazy.close()
    lazy.close()  # idempotent
    assert named_threads("sagaz-test-lazy") == []
    assert not first.running
    assert lazy.call(double, 3) == 6  # a new portal, a new thread
    assert lazy.portal is not first
    assert len(named_threads("sagaz-test-lazy")) == 1
    lazy.close()
    assert named_threads("sagaz-test-lazy") == []
    LazyPortal("sagaz-test-never-used").close()  # nothing to do


def test_a_lazy_portal_runs_its_runtime_from_first_use_to_close(db: DatabaseUrls) -> None:
    made: list[SagaRuntime] = []

    def runtime() -> SagaRuntime:
        made.append(SagaRuntime(SagaConfig(database_url=db.url)))
        return made[-1]

    lazy = LazyPortal("sagaz-test-lazy-runtime", runtime)
    assert made == []  # not even made before the first call

    async def runtime_is_up() -> bool:
        return made[-1].started and made[-1].config.initialized

    assert lazy.call(runtime_is_up)
    lazy.close()
    assert not made[0].started
    assert not made[0].config.initialized  # the runtime initialised it, so closed it
    assert named_threads("sagaz-test-lazy-runtime") == []
    assert lazy.call(runtime_is_up)  # a new runtime on a new portal
    assert len(made) == 2
    lazy.close()
    assert not made[1].started


def test_a_runtime_that_fails_to_start_leaves_no_thread_and_is_retried() -> None:
    made: list[SagaRuntime] = []

    def runtime() -> SagaRuntime:
        # an in-process relay needs a database: start() refuses, and cleans up after itself
        made.append(SagaRuntime(SagaConfig(database_url=None), run_relay=True))
        return made[-1]

    lazy = LazyPortal("sagaz-test-lazy-failing", runtime)
    for attempt in (1, 2):
        with pytest.raises(ConfigurationError, match="no database engine"):
            lazy.call(double, 1)
        assert len(made) == attempt
        assert not made[-1].started
        assert named_threads("sagaz-test-lazy-failing") == []
    lazy.close()  # nothing was started: nothing to do


# -- the health payload ---------------------------------------------------------------------


async def test_health_reports_the_outbox_counts(db: DatabaseUrls) -> None:
    engine = db.async_engine()
    try:
        async with AsyncSession(engine) as session:
            outbox.add(session, "t", {"n": 1})
            await session.commit()
        report = await check_health(engine)
    finally:
        await engine.dispose()
    assert report.status_code == 200
    payload = report.as_dict()
    assert payload["status"] == "ok"
    assert payload["database"] == "ok"
    assert payload["outbox"]["pending"] == 1
    assert payload["outbox"]["dead"] == 0
    assert payload["outbox"]["oldest_pending_age_seconds"] >= 0


def test_sync_health_is_the_same(db: DatabaseUrls) -> None:
    engine = db.sync_engine()
    try:
        report = check_health_sync(engine)
    finally:
        engine.dispose()
    body = report.as_dict()
    assert (body["status"], body["database"], body["problems"]) == ("ok", "ok", [])
    assert body["outbox"] == {"pending": 0, "dead": 0, "oldest_pending_age_seconds": None}
    assert body["sagas"] == {"pending": 0, "running": 0, "compensating": 0, "failed": 0}


UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=1"


async def test_an_unreachable_database_is_a_503_that_names_only_the_error_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_async_engine(UNREACHABLE)
    try:
        report = await check_health(engine, timeout_seconds=3)
    finally:
        await engine.dispose()
    assert report.status_code == 503
    assert report.as_dict() == {
        "status": "failing",
        "database": "unavailable",
        "problems": ["the database does not answer"],
    }
    assert "does not answer" in caplog.text

    sync_engine = create_engine(UNREACHABLE)
    try:
        assert check_health_sync(sync_engine).status_code == 503
    finally:
        sync_engine.dispose()


async def test_no_database_configured_is_healthy() -> None:
    assert (await check_health(None)).as_dict() == {"status": "ok", "database": "not configured"}
    assert check_health_sync(None) == HealthReport(database="not configured")
