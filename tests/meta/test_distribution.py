"""The wheel and sdist that `python -m build` makes contain what an install needs, and
nothing of the development tree."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import sagaz

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def test_the_wheel_ships_migrations_types_and_the_django_app(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    assert wheel.name.startswith(f"sagaz-{sagaz.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "sagaz/py.typed",
        "sagaz/migrations/env.py",
        "sagaz/migrations/versions/0001_initial.py",
        "sagaz/integrations/django/migrations/0001_initial.py",
    ):
        assert required in names, required
    unwanted = [
        n for n in names if n.startswith("tests/") or "__pycache__" in n or n.endswith(".pyc")
    ]
    assert unwanted == []


def test_the_sdist_has_the_sources_and_no_caches(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    assert sdist.name == f"sagaz-{sagaz.__version__}.tar.gz"
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for required in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "alembic.ini",
        "sagaz/py.typed",
    ):
        assert required in names, required
    unwanted = [
        n
        for n in names
        if n.startswith(("tests/", ".venv/")) or "__pycache__" in n or n.endswith(".pyc")
    ]
    assert unwanted == []
