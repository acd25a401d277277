"""`sagaz db upgrade` works from a built wheel installed into a fresh virtual environment,
run outside the checkout: the Alembic environment and revisions ship inside the package."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from sagaz.store.schema import TABLE_NAMES

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str | Path, cwd: Path) -> str:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.pop("SAGAZ_DATABASE_URL", None)
    completed = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


@pytest.mark.slow
def test_sagaz_db_upgrade_from_an_installed_wheel(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # --no-isolation: build with the hatchling of the test environment (no network).
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, cwd=ROOT)
    (wheel,) = dist.glob("sagaz-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "sagaz/migrations/env.py",
        "sagaz/migrations/script.py.mako",
        "sagaz/migrations/versions/0001_initial.py",
        "sagaz/store/migrations.py",
    } <= names
    assert not any(name.startswith("tests/") for name in names)

    # A fresh venv whose dependencies come from the test environment's site-packages (no
    # network). `--system-site-packages` would not do: the test environment is itself a
    # venv, and that flag reaches the base interpreter's site-packages, not the venv's. A
    # .pth line adds the directory without processing its .pth files, so the checkout's
    # editable install stays out and the wheel is the only sagaz there.
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    site_packages = run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
    ).strip()
    (Path(site_packages) / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import sagaz; print(sagaz.__file__)", cwd=elsewhere)
    assert where.startswith(site_packages), f"sagaz imported from {where}, not from the wheel"
    database = elsewhere / "x.db"
    sagaz = environment / "bin" / "sagaz"
    output = run(sagaz, "db", "upgrade", "--url", f"sqlite:///{database}", cwd=elsewhere)
    assert output.strip() == "sagaz tables at 0005_trace_context (head)"
    assert not (elsewhere / "sagaz.db").exists()  # the --url was used, not the default
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        assert set(sa.inspect(engine).get_table_names()) == {*TABLE_NAMES, "sagaz_alembic_version"}
    finally:
        engine.dispose()
