"""`sagaz db upgrade` works from a built wheel installed into a fresh virtual environment,
run outside the checkout: the migrations ship inside the package."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import sqlalchemy as sa

from sagaz.store.schema import TABLE_NAMES

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str | Path, cwd: Path) -> str:
    completed = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def test_sagaz_db_upgrade_from_an_installed_wheel(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # --no-isolation: build with the hatchling already installed (no network needed).
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, cwd=ROOT)
    (wheel,) = dist.glob("sagaz-*.whl")
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    # Dependencies come from the test environment's site-packages (no network); the
    # wheel itself is installed into the new environment and shadows the checkout.
    site_packages = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
        ).strip()
    )
    (site_packages / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import sagaz; print(sagaz.__file__)", cwd=elsewhere)
    assert str(environment) in where, f"sagaz imported from {where}, not from the wheel"
    database = elsewhere / "app.db"
    output = run(
        environment / "bin" / "sagaz",
        "db",
        "upgrade",
        "--url",
        f"sqlite:///{database}",
        cwd=elsewhere,
    )
    assert "head" in output
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        assert set(sa.inspect(engine).get_table_names()) >= TABLE_NAMES
    finally:
        engine.dispose()
