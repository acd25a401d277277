"""Finds the ```python blocks of README.md and docs/**/*.md, with their marker.

The convention (documented in docs/index.md, "Code blocks are tested"): an HTML comment on
the line just before a block - invisible on the site and on the repository host - says how
the suite treats it.

- no marker: a fragment. It is compiled, and every ``from sagaz... import X`` /
  ``import sagaz...`` in it must resolve (the module imports, the name exists).
- ``<!-- docs-test: run -->``: a complete program. It also runs, in a fresh interpreter in
  an empty temporary directory, against SQLite or in-memory parts only, and must exit 0.
- ``<!-- docs-test: needs SOMETHING -->``: needs a server or an application
  (``needs postgres``, ``needs a FastAPI app``): compiled and import-checked like a
  fragment; the marker says why it does not run.
- ``<!-- docs-test: legacy -->``: code of another library or of an old sagaz API (the
  "before" half of docs/migrating.md): compiled only, its imports are not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKERS = ("run", "needs", "legacy")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<info>[^\n]*)$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>[\w-]+)(?P<rest>[^>]*)-->\s*$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced ```python block: where it is, its marker and its (dedented) source."""

    path: Path
    line: int  # 1-based line of the opening fence
    marker: str | None  # "run", "needs", "legacy" or None (a fragment)
    source: str

    @property
    def id(self) -> str:
        """`docs/outbox.md:42` - the pytest id."""
        path = self.path.relative_to(ROOT) if ROOT in self.path.parents else self.path.name
        return f"{Path(path).as_posix()}:{self.line}"


def markdown_files() -> list[Path]:
    """README.md and every Markdown page under docs/, sorted."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(path: Path) -> list[CodeBlock]:
    """The ```python blocks of `path`. Raises ValueError naming the file and line for an
    unknown marker or an unclosed fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[CodeBlock] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{index + 1}: unclosed code fence")
        language = opening["info"].split()[0].lower() if opening["info"].strip() else ""
        if language in ("python", "py"):
            body = [line.removeprefix(indent) for line in lines[index + 1 : end]]
            blocks.append(
                CodeBlock(path, index + 1, _marker(path, lines, index), "\n".join(body) + "\n")
            )
        index = end + 1
    return blocks


def _marker(path: Path, lines: list[str], fence_index: int) -> str | None:
    previous = fence_index - 1
    while previous >= 0 and not lines[previous].strip():
        previous -= 1
    if previous < 0:
        return None
    match = _MARKER.match(lines[previous])
    if match is None:
        if "docs-test" in lines[previous]:
            raise ValueError(f"{path}:{previous + 1}: malformed docs-test marker")
        return None
    if match["kind"] not in MARKERS:
        raise ValueError(
            f"{path}:{previous + 1}: unknown docs-test marker {match['kind']!r}; "
            f"use one of {', '.join(MARKERS)}"
        )
    if match["kind"] == "needs" and not match["rest"].strip():
        raise ValueError(f"{path}:{previous + 1}: say what the block needs: docs-test: needs X")
    return match["kind"]


def all_blocks() -> list[CodeBlock]:
    """Every ```python block of README.md and docs/."""
    return [block for path in markdown_files() for block in python_blocks(path)]
