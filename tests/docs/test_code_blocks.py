"""Every ```python block of README.md and docs/ compiles, its sagaz imports resolve, and
the blocks marked ``<!-- docs-test: run -->`` run (the convention: markdown_blocks.py)."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.markdown_blocks import ROOT, CodeBlock, all_blocks, python_blocks

BLOCKS = all_blocks()
RUNNABLE = [block for block in BLOCKS if block.marker == "run"]


def sagaz_imports(tree: ast.AST) -> list[tuple[str, str | None, int]]:
    """(module, name or None, line) for every import of sagaz in `tree`, nested ones too."""
    found: list[tuple[str, str | None, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "sagaz" or node.module.startswith("sagaz."):
                found.extend((node.module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend(
                (alias.name, None, node.lineno)
                for alias in node.names
                if alias.name == "sagaz" or alias.name.startswith("sagaz.")
            )
    return found


def unresolved_imports(block: CodeBlock) -> list[str]:
    """What the block imports from sagaz that does not exist, as readable messages."""
    tree = ast.parse(block.source, filename=block.id)
    problems = []
    for module_name, name, line in sagaz_imports(tree):
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            problems.append(f"line {line}: import {module_name}: {error}")
            continue
        if name is None or name == "*" or hasattr(module, name):
            continue
        try:  # `from sagaz.integrations import django` imports a submodule
            importlib.import_module(f"{module_name}.{name}")
        except ImportError:
            problems.append(f"line {line}: {module_name} has no name {name!r}")
    return problems


def compile_block(block: CodeBlock) -> None:
    """Compile the block as a module; top-level `await` is allowed (a notebook-style
    snippet) and so is `...` standing for elided code."""
    compile(block.source, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_blocks_are_found() -> None:
    assert len(BLOCKS) >= 40, "README.md and docs/ should have many python blocks"
    assert len(RUNNABLE) >= 7, "the migration guide and the quick starts have runnable blocks"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_block_compiles_and_its_sagaz_imports_resolve(block: CodeBlock) -> None:
    try:
        compile_block(block)
    except SyntaxError as error:
        pytest.fail(f"{block.id}: does not compile: {error}")
    if block.marker != "legacy":
        assert unresolved_imports(block) == [], block.id


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_runnable_block_runs(block: CodeBlock, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(block.source, encoding="utf-8")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SAGAZ_")}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{block.id} failed:\n{result.stdout}\n{result.stderr}"


# -- the checker itself: a block that lies is caught ------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_missing_sagaz_name_is_reported(tmp_path: Path) -> None:
    (block,) = python_blocks(write(tmp_path, "```python\nfrom sagaz import start_sagas\n```\n"))
    assert block.marker is None
    assert unresolved_imports(block) == ["line 1: sagaz has no name 'start_sagas'"]


def test_a_missing_sagaz_module_is_reported(tmp_path: Path) -> None:
    text = "<!-- docs-test: needs postgres -->\n```python\nimport sagaz.nowhere\n```\n"
    (block,) = python_blocks(write(tmp_path, text))
    assert block.marker == "needs"
    (problem,) = unresolved_imports(block)
    assert problem.startswith("line 1: import sagaz.nowhere:")


def test_markers_are_read_and_checked(tmp_path: Path) -> None:
    text = (
        "<!-- docs-test: run -->\n\n```python\nprint(1)\n```\n\n"
        "<!-- docs-test: legacy -->\n```py\nfrom sagaz import OutboxWorker\n```\n"
        "  ```python\n  x = 1\n  ```\n"
    )
    blocks = python_blocks(write(tmp_path, text))
    assert [(block.marker, block.source) for block in blocks] == [
        ("run", "print(1)\n"),
        ("legacy", "from sagaz import OutboxWorker\n"),
        (None, "x = 1\n"),
    ]
    with pytest.raises(ValueError, match=r"page.md:1: unknown docs-test marker 'runs'"):
        python_blocks(write(tmp_path, "<!-- docs-test: runs -->\n```python\nx\n```\n"))
    with pytest.raises(ValueError, match="say what the block needs"):
        python_blocks(write(tmp_path, "<!-- docs-test: needs -->\n```python\nx\n```\n"))


def test_a_block_that_does_not_compile_fails(tmp_path: Path) -> None:
    (block,) = python_blocks(write(tmp_path, "```python\ndef broken(:\n```\n"))
    with pytest.raises(SyntaxError):
        compile_block(block)
