"""The installed `sagaz` command finds `--import` modules in the current directory, as
uvicorn, celery and flask do (a console script's sys.path holds its bin directory, not the
directory it runs in; only `python -m sagaz` had it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SAGAZ = Path(sys.executable).parent / "sagaz"  # the console script of this environment

MODULE = """
from sagaz import Saga, action


class LocalSaga(Saga):
    saga_name = "local-newcomer-saga"

    @action("only")
    def only(self, ctx):
        return {}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory holding a module that defines a saga, and nothing else."""
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "sagas.py").write_text(MODULE)
    return tmp_path


def sagaz(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAZ_", "PYTHON"))}
    return subprocess.run(
        [str(SAGAZ), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_console_script_is_the_one_tested() -> None:
    assert SAGAZ.exists(), f"no `sagaz` console script next to {sys.executable}"


def test_list_imports_a_module_of_the_current_directory(project: Path) -> None:
    result = sagaz("list", "--import", "shop.sagas", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "local-newcomer-saga" in result.stdout


def test_worker_imports_a_module_of_the_current_directory(project: Path) -> None:
    # The import succeeds; the worker then stops at the database it was given (missing).
    result = sagaz("worker", "--import", "shop.sagas", "--url", "sqlite:///missing.db", cwd=project)
    assert result.returncode == 1, result.stderr
    assert "cannot import" not in result.stderr
    assert "there is no database at missing.db" in result.stderr
    assert not (project / "missing.db").exists()


def test_an_unknown_module_is_still_a_usage_error(project: Path) -> None:
    result = sagaz("list", "--import", "shop.nothing", cwd=project)
    assert result.returncode == 2
    assert "cannot import 'shop.nothing'" in result.stderr
