"""Optional means optional: `import sagaz` works with every extra missing, and switching
on a feature whose extra is missing names the extra to install.

Each check runs in a fresh interpreter whose import system refuses the optional packages
(a sys.meta_path finder raising ImportError), as if they were not installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

OPTIONAL = [
    "fastapi",
    "starlette",
    "flask",
    "flask_sqlalchemy",
    "django",
    "redis",
    "aio_pika",
    "aiormq",
    "nats",
    "aiokafka",
    "opentelemetry",
    "prometheus_client",
    "psycopg",
    "psycopg2",
    "asyncpg",
    "aiosqlite",
]

BLOCKER = textwrap.dedent(
    f"""
    import sys

    BLOCKED = {OPTIONAL!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked: optional extra not installed")
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCKER + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_blocker_really_blocks() -> None:
    done = run_blocked(
        """
        try:
            import prometheus_client
        except ImportError as error:
            print("blocked:", error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "blocked: prometheus_client is blocked" in done.stdout


def test_import_sagaz_needs_no_extra() -> None:
    done = run_blocked(
        f"""
        import asyncio
        import sagaz
        from sagaz import Saga

        leaked = sorted(
            name for name in sys.modules if name.split(".")[0] in {OPTIONAL!r}
        )
        assert not leaked, leaked

        saga = Saga(name="no-extras").add_step("a", lambda ctx: {{"ok": True}})
        result = asyncio.run(saga.run({{}}))
        print(sagaz.__version__, result.status.value, result.context)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "completed {'ok': True}" in done.stdout


@pytest.mark.parametrize(("switch", "extra"), [("metrics", "prometheus"), ("tracing", "otel")])
def test_switching_on_a_feature_without_its_extra_names_the_extra(switch: str, extra: str) -> None:
    done = run_blocked(
        f"""
        import asyncio
        from sagaz import MissingExtraError, SagaConfig

        config = SagaConfig({switch}=True)
        try:
            asyncio.run(config.initialize())
        except MissingExtraError as error:
            print("extra:", error.extra)
            print("message:", error)
        else:
            raise SystemExit("no MissingExtraError")
        """
    )
    assert done.returncode == 0, done.stderr
    assert f"extra: {extra}" in done.stdout
    assert f"pip install 'sagaz[{extra}]'" in done.stdout


@pytest.mark.parametrize(
    ("factory", "url", "module", "extra"),
    [
        ("create_engine", "postgresql://u@localhost/db", "psycopg", "postgres"),
        ("create_async_engine", "postgresql://u@localhost/db", "psycopg", "postgres"),
        ("create_async_engine", "postgresql+asyncpg://u@localhost/db", "asyncpg", "asyncpg"),
        ("create_async_engine", "sqlite:///unused.db", "aiosqlite", "sqlite"),
    ],
)
def test_an_engine_without_its_driver_names_the_extra(
    factory: str, url: str, module: str, extra: str
) -> None:
    done = run_blocked(
        f"""
        from sagaz import MissingExtraError
        from sagaz.store.engines import {factory}

        try:
            {factory}({url!r})
        except MissingExtraError as error:
            assert isinstance(error, ImportError)
            assert isinstance(error.__cause__, ImportError), error.__cause__
            print("extra:", error.extra, "module:", error.module)
            print("message:", error)
        else:
            raise SystemExit("no MissingExtraError")
        """
    )
    assert done.returncode == 0, done.stderr
    assert f"extra: {extra} module: {module}" in done.stdout
    assert f"pip install 'sagaz[{extra}]'" in done.stdout


def test_sync_sqlite_needs_no_extra() -> None:
    done = run_blocked(
        """
        import sqlalchemy as sa
        from sagaz.store.engines import create_engine

        engine = create_engine("sqlite://")
        with engine.connect() as connection:
            print("answer:", connection.scalar(sa.text("SELECT 42")))
        engine.dispose()
        """
    )
    assert done.returncode == 0, done.stderr
    assert "answer: 42" in done.stdout
