"""The README's demo runs as documented and shows both outcomes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_on_sqlite_and_writes_nothing_to_the_working_directory(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    output = completed.stdout
    assert "committed: 2 orders, 2 sagas (request 3 left nothing)" in output
    assert "order 1: COMPLETED" in output
    assert "order 2: COMPENSATED" in output
    assert "undo - released reservation R-2" in output
    assert output.count("orders.placed") == 2
    assert list(tmp_path.iterdir()) == []  # the database was a temporary file
