"""The saga registry: saga name -> definition, so a worker can resume a saga by name."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sagaz.errors import SagaRegistryError, UnknownSagaError

if TYPE_CHECKING:
    from sagaz.saga import Saga


class SagaRegistry:
    """Maps saga names to saga classes (declarative) or saga instances (imperative).

    Registering the same name twice is allowed only for the same saga: the same class
    re-imported (same module and qualified name) or an imperative saga with the same
    steps. Anything else raises SagaRegistryError, because a worker could not tell which
    of the two a stored saga means.

    An imperative saga built at module level registers before its first `add_step` and
    again after each one; while its steps so far match the start of the registered saga's
    steps the decision waits, and it raises as soon as they differ.
    """

    def __init__(self) -> None:
        self._entries: dict[str, type[Saga] | Saga] = {}
        self._lock = threading.Lock()

    def register(self, name: str, source: type[Saga] | Saga) -> None:
        with self._lock:
            existing = self._entries.get(name)
            if existing is not None and existing is not source:
                old, new = _fingerprint(existing), _fingerprint(source)
                if old == new:
                    self._entries[name] = source
                    return
                if _is_being_built(source) and old[: len(new)] == new:
                    return  # may still become identical; add_step registers it again
                raise SagaRegistryError(
                    f"saga name '{name}' is already registered to {_describe(existing)}; "
                    f"cannot register {_describe(source)} under the same name"
                )
            self._entries[name] = source

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    def resolve(self, name: str) -> Saga:
        """A saga instance ready to run for `name`; UnknownSagaError when not registered."""
        from sagaz.saga import Saga

        source = self.source(name)
        if isinstance(source, Saga):
            return source
        return source()

    def source(self, name: str) -> type[Saga] | Saga:
        """The class or imperative saga registered under `name` (UnknownSagaError if none)."""
        source = self._entries.get(name)
        if source is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownSagaError(
                f"no saga named '{name}' is registered in this process (registered: {known}); "
                "import the module that defines it before starting the worker"
            )
        return source

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    @contextmanager
    def isolated(self) -> Iterator[SagaRegistry]:
        """Run a block with the registry's current entries restored afterwards (tests)."""
        with self._lock:
            saved = dict(self._entries)
        try:
            yield self
        finally:
            with self._lock:
                self._entries = saved


def _fingerprint(source: type[Saga] | Saga) -> tuple[object, ...]:
    if isinstance(source, type):
        return ("class", source.__module__, source.__qualname__)
    return ("instance", *source.fingerprint())


def _describe(source: type[Saga] | Saga) -> str:
    if isinstance(source, type):
        return f"class {source.__module__}.{source.__qualname__}"
    return f"imperative saga with steps {source.step_names}"


def _is_being_built(source: type[Saga] | Saga) -> bool:
    return not isinstance(source, type) and source.is_being_built


registry = SagaRegistry()
"""The process-wide registry that workers resolve saga names against."""
