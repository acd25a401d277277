"""The hosted CI workflow is valid and runs the README's test command, as .ci/run does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def _check_jsonschema() -> Path:
    executable = Path(sys.executable).parent / "check-jsonschema"
    if not executable.exists():
        pytest.fail("check-jsonschema is missing: install the dev extra (pip install -e '.[dev]')")
    return executable


def test_the_workflow_passes_the_github_workflow_schema() -> None:
    result = subprocess.run(
        [str(_check_jsonschema()), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_refuses_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs_on:", 1))
    result = subprocess.run(
        [str(_check_jsonschema()), "--builtin-schema", "vendor.github-workflows", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0


def test_ci_run_the_readme_and_the_workflow_use_one_test_command() -> None:
    readme_commands = re.findall(r"^(\./scripts/test)\b", (ROOT / "README.md").read_text(), re.M)
    assert readme_commands == ["./scripts/test"]
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec \./scripts/test$", ci_run, re.M)
    workflow = WORKFLOW.read_text()
    assert "run: bash .ci/run" in workflow
    other_runs = re.findall(r"run: (\./scripts/test[^\n]*)", workflow)
    assert other_runs, "the matrix jobs run the README's command for a part of the suite"
    assert all(run.startswith("./scripts/test ") for run in other_runs)
