"""Type-checks the docs' Python blocks with mypy, as a reader's editor would.

Each block that is not `legacy` becomes a module of its own. Fragments use names their
page defined earlier (`session`, `app`, `engine`) and import the reader's own modules
(`shop.models`): those are not errors here, so undefined names are `Any` and the
reader's imports are not looked up. What is checked is every use of sagaz's API: the
names, the arguments, their types and what the calls return. A block with a top-level
`await` or `async with` is checked as the body of an `async def`.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from tests.docs.markdown_blocks import ROOT, CodeBlock

#: Error codes a fragment raises by being a fragment (see the module docstring).
FRAGMENT_CODES = (
    "name-defined",  # names defined earlier on the page: Any
    "no-redef",  # a page's blocks redefine its examples
    "valid-type",  # an alias built from an undefined (Any) name
    "import-not-found",  # the reader's modules (shop.models); sagaz's are checked elsewhere
    "import-untyped",
)

_LINE = re.compile(r"^(?P<module>block_\d+)\.py:(?P<line>\d+): error: (?P<message>.*)$")


def module_source(block: CodeBlock) -> tuple[str, int]:
    """The block as a module and the number of lines added before it (for line numbers)."""
    try:
        compile(block.source, block.id, "exec")
    except SyntaxError:
        # Top-level await / async with: a notebook-style snippet.
        body = textwrap.indent(block.source, "    ")
        return f"async def _docs_block() -> None:\n{body}", 1
    return block.source, 0


def type_errors(blocks: Sequence[CodeBlock], workdir: Path) -> list[str]:
    """mypy's errors for `blocks`, each as 'docs/page.md:LINE: message [code]' (LINE is
    the line in the page). One mypy run for all of them."""
    offsets: dict[str, tuple[CodeBlock, int]] = {}
    for number, block in enumerate(blocks):
        name = f"block_{number}"
        source, added = module_source(block)
        ast.parse(source)  # a block that does not parse is test_code_blocks' failure
        (workdir / f"{name}.py").write_text(source, encoding="utf-8")
        offsets[name] = (block, added)
    command = [
        sys.executable, "-m", "mypy", "--no-incremental", "--check-untyped-defs",
        "--follow-imports=silent", "--explicit-package-bases", "--no-error-summary",
        "--show-error-codes", "--python-executable", sys.executable,
        *(f"--disable-error-code={code}" for code in FRAGMENT_CODES),
        *sorted(str(path.name) for path in workdir.glob("block_*.py")),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        cwd=workdir,
        env={"PATH": "", "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode not in (0, 1) or result.stderr.strip():
        raise RuntimeError(f"mypy did not run: {result.stdout}\n{result.stderr}")
    errors = []
    for line in result.stdout.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue  # notes
        block, added = offsets[match["module"]]
        page_line = block.line + int(match["line"]) - added
        errors.append(f"{block.id.rsplit(':', 1)[0]}:{page_line}: {match['message']}")
    return errors
