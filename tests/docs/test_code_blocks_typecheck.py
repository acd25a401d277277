"""The docs' Python blocks type-check against sagaz's API (tests/docs/block_typecheck.py):
a renamed argument, a wrong type or a removed name in the docs fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.block_typecheck import type_errors
from tests.docs.markdown_blocks import all_blocks, python_blocks

pytestmark = pytest.mark.slow


def test_every_docs_block_type_checks(tmp_path: Path) -> None:
    blocks = [block for block in all_blocks() if block.marker != "legacy"]
    assert type_errors(blocks, tmp_path) == []


def test_a_block_that_misuses_the_api_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nfrom sagaz import start_saga\n\n"
        "saga_id: int = start_saga(session, OrderSaga, {}, idempotency=1)\n```\n"
        "\n```python\nawait relay.relay_once()\nfrom sagaz import SagaConfig\n"
        "SagaConfig(database_url=3)\n```\n",
        encoding="utf-8",
    )
    work = tmp_path / "work"
    work.mkdir()
    errors = type_errors(python_blocks(page), work)
    assert any(e.startswith("page.md:6:") and "idempotency" in e for e in errors), errors
    assert any(e.startswith("page.md:6:") and "int" in e for e in errors), errors
    assert any(e.startswith("page.md:12:") and "database_url" in e for e in errors), errors
