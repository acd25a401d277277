"""The saga registry: saga name -> definition, so a worker can resume a saga by name."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, TypeAlias

from sagaz.errors import SagaRegistryError, UnknownSagaError

if TYPE_CHECKING:
    from sagaz.definition import SagaDefinition
    from sagaz.policy import RunSettings


class RegisteredSaga(Protocol):
    """What the registry needs of a saga (`sagaz.Saga` is one). The registry does not
    import `sagaz.saga`, which registers every saga it defines here."""

    @property
    def definition(self) -> SagaDefinition: ...

    @property
    def config(self) -> RunSettings | None: ...

    @property
    def is_declarative(self) -> bool: ...

    @property
    def is_being_built(self) -> bool: ...

    @property
    def step_names(self) -> list[str]: ...

    def fingerprint(self) -> tuple[object, ...]: ...


Source: TypeAlias = "type[RegisteredSaga] | RegisteredSaga"
"""What a name is registered to: a saga class (declarative) or an imperative saga."""


class SagaRegistry:
    """Maps saga names to saga classes (declarative) or saga instances (imperative).

    Registering the same name twice is allowed only for the same saga: the same class
    re-imported (same module and qualified name) or an imperative saga with the same
    steps. Anything else raises SagaRegistryError, because a worker could not tell which
    of the two a stored saga means.

    An imperative saga built at module level registers before its first `add_step` and
    again after each one; while its steps so far match the start of the registered saga's
    steps the decision waits, and it raises as soon as they differ. One that stops short
    (its steps stay a strict prefix of the registered saga's) is a conflict too: looking
    the name up (`source`, `resolve`, `in`) raises SagaRegistryError for as long as that
    saga exists, since a worker could not tell which of the two was meant.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Source] = {}
        # Module-level imperative sagas whose steps so far are a strict prefix of the
        # saga registered under their name: still being built, or stopped short.
        self._waiting: dict[str, weakref.ref[RegisteredSaga]] = {}
        self._lock = threading.Lock()

    def register(self, name: str, source: Source) -> None:
        with self._lock:
            existing = self._entries.get(name)
            waiting = self._waiting.get(name)
            if waiting is not None and waiting() in (None, source):
                del self._waiting[name]
            if existing is not None and existing is not source:
                old, new = _fingerprint(existing), _fingerprint(source)
                if old == new:
                    self._entries[name] = source
                    return
                if _is_being_built(source) and old[: len(new)] == new:
                    # May still become identical (add_step registers it again); until
                    # then, a lookup of the name refuses to choose between the two.
                    assert not isinstance(source, type)
                    self._waiting[name] = weakref.ref(source)
                    return
                raise SagaRegistryError(
                    f"saga name '{name}' is already registered to {_label(existing)}; "
                    f"cannot register {_label(source)} under the same name"
                )
            self._entries[name] = source

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)
            self._waiting.pop(name, None)

    def check_registered(self, name: str, source: Source) -> None:
        """Raise SagaRegistryError unless `source` is what a worker would run for `name`:
        the registered saga itself, or one with the same definition (the same class
        re-imported, an imperative saga with the same steps). UnknownSagaError when
        nothing is registered under `name`."""
        registered = self.source(name)
        if not isinstance(source, type) and source.is_declarative:
            source = type(source)
        if registered is source or _fingerprint(registered) == _fingerprint(source):
            return
        raise SagaRegistryError(
            f"saga name '{name}' is registered to {_label(registered)}, not to the given "
            f"{_label(source)}; a worker would run the registered one. Register this "
            "saga under a name of its own (or start the registered one)"
        )

    def resolve(self, name: str) -> RegisteredSaga:
        """A saga instance ready to run for `name`; UnknownSagaError when not registered."""
        source = self.source(name)
        if isinstance(source, type):
            return source()
        return source

    def source(self, name: str) -> Source:
        """The class or imperative saga registered under `name` (UnknownSagaError if none;
        SagaRegistryError while a module-level saga of that name stopped short of it)."""
        source = self._entries.get(name)
        if name in self._waiting:
            self._refuse_waiting(name)
        if source is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownSagaError(
                f"no saga named '{name}' is registered in this process (registered: {known}); "
                "import the module that defines it before starting the worker"
            )
        return source

    def __contains__(self, name: object) -> bool:
        if name in self._waiting:
            assert isinstance(name, str)
            self._refuse_waiting(name)
        return name in self._entries

    def _refuse_waiting(self, name: str) -> None:
        with self._lock:
            reference = self._waiting.get(name)
            waiting = reference() if reference is not None else None
            existing = self._entries.get(name)
            if waiting is None or existing is None:
                self._waiting.pop(name, None)
                return
            if _fingerprint(waiting) == _fingerprint(existing):
                del self._waiting[name]
                return
        raise SagaRegistryError(
            f"saga name '{name}' is registered to {_label(existing)}, and another "
            f"{_label(waiting)} was built under the same name at module level; it stopped "
            "short of the registered saga, so a worker could not tell which one is meant. "
            "Give one of them another name"
        )

    def names(self) -> list[str]:
        return sorted(self._entries)

    @contextmanager
    def isolated(self) -> Iterator[SagaRegistry]:
        """Run a block with the registry's current entries restored afterwards (tests)."""
        with self._lock:
            saved = dict(self._entries)
            saved_waiting = dict(self._waiting)
        try:
            yield self
        finally:
            with self._lock:
                self._entries = saved
                self._waiting = saved_waiting


def _fingerprint(source: Source) -> tuple[object, ...]:
    if isinstance(source, type):
        return ("class", source.__module__, source.__qualname__)
    return ("instance", *source.fingerprint())


def _label(source: Source) -> str:
    if isinstance(source, type):
        return f"class {source.__module__}.{source.__qualname__}"
    return f"imperative saga with steps {source.step_names}"


def _is_being_built(source: Source) -> bool:
    return not isinstance(source, type) and source.is_being_built


registry = SagaRegistry()
"""The process-wide registry that workers resolve saga names against."""
