"""The shape of the package: every module imports, no import circles, small modules, and
the shared helpers written once (sagaz/_util.py).

What counts as an import circle: an `import` of one sagaz module by another *anywhere* in
its file - at module level, inside a function (a lazy import), or under
`if TYPE_CHECKING:`. A lazy or type-only import does not fail at import time, but it is
still a dependency, and two modules that depend on each other are one concern split in
two (issue 12 named two such circles: config <-> engine, a type-only import, and
registry <-> saga, lazy imports). A package's `__init__` importing its own submodules is
not a circle (that is how packages work); a submodule importing names from its parent
package's `__init__` is an edge like any other.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import sagaz

PACKAGE = Path(sagaz.__file__).parent
MAX_LINES = 450

# Modules still over MAX_LINES while other branches of issue 12 restructure them; the
# coordinator removes each entry once the branch that shrinks it is merged (issue 12).
KNOWN_OVERSIZED: set[str] = set()

# Scripts that do their work when imported: the `python -m sagaz` entry point and
# Alembic's env.py (it needs a running migration context).
RUN_ON_IMPORT = {"sagaz.__main__", "sagaz.migrations.env"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> dict[str, int]:
    """The sagaz modules `name` imports anywhere in its file, with the first line."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def nearest_module(dotted: str) -> str | None:
        while dotted and dotted not in MODULES:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from package import submodule` imports the submodule
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        for target in targets:
            module = nearest_module(target) if target.startswith("sagaz") else None
            if module is None or module == name:
                continue
            if module.startswith(name + "."):
                continue  # a package's __init__ importing its own submodules
            found.setdefault(module, node.lineno)
    return found


def import_cycles() -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan)."""
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return [
        [
            f"{source} -> {target} (line {line})"
            for source in group
            for target, line in graph[source].items()
            if target in group
        ]
        for group in cycles
    ]


def test_the_graph_sees_the_imports_it_should() -> None:
    """Guard against a graph that finds nothing: known edges of each kind are seen."""
    assert "sagaz.policy" in imported_modules("sagaz.config", MODULES["sagaz.config"])
    lazy = imported_modules("sagaz.saga", MODULES["sagaz.saga"])
    assert "sagaz.engine" in lazy  # imported inside Saga.run
    assert "sagaz.config" in lazy  # under TYPE_CHECKING (and inside Saga.run)


def test_no_import_cycles_inside_sagaz() -> None:
    assert import_cycles() == []


@pytest.mark.parametrize("name", sorted(set(MODULES) - RUN_ON_IMPORT))
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {
        path.relative_to(PACKAGE.parent).as_posix(): len(path.read_text().splitlines())
        for path in MODULES.values()
    }
    over = {module: lines for module, lines in sizes.items() if lines > MAX_LINES}
    assert set(over) - KNOWN_OVERSIZED == set(), f"over {MAX_LINES} lines: {over}"
    shrunk = {module for module in KNOWN_OVERSIZED if sizes.get(module, 0) <= MAX_LINES}
    assert not shrunk, f"{shrunk} no longer over {MAX_LINES} lines: remove from KNOWN_OVERSIZED"


# Names of helpers whose one home is sagaz/_util.py (issue 12: each had copies that drifted).
SHARED_HELPERS = {
    "describe",
    "escape_text",
    "backoff",
    "redact_url",
    "redact_database_url",
    "redacted",
    "scrub_passwords",
    "parse_bool",
    "as_bool",
    "utcnow",
    "requires_extra",
}


def test_shared_helpers_are_defined_once() -> None:
    homes: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name in SHARED_HELPERS
                and node.col_offset == 0
            ):
                homes.setdefault(node.name, []).append(name)
    assert {helper: where for helper, where in homes.items() if where != ["sagaz._util"]} == {}
