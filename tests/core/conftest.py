"""Fixtures shared by the core (in-memory) tests: each test gets its own registry entries
and the process-wide config back as it found it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sagaz.config
from sagaz.registry import registry


@pytest.fixture(autouse=True)
def _isolated_registry() -> Iterator[None]:
    with registry.isolated():
        yield


@pytest.fixture(autouse=True)
def _restore_global_config() -> Iterator[None]:
    saved = sagaz.config._global
    yield
    sagaz.config._global = saved
