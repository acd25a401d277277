"""Immutable saga definitions: steps, the dependency graph, its validation and drawing."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sagaz.errors import SagaDefinitionError
from sagaz.types import ParallelFailureStrategy

MAX_NAME_LENGTH = 200
"""The longest saga or step name: the length of the name columns in `sagaz.store.schema`."""

StepFunction = Callable[..., Any]
"""A step action or compensation: `(ctx)` (or `(self, ctx)` on a Saga subclass), sync or
async, returning None or a mapping to merge into the saga context."""


@dataclass(frozen=True, slots=True)
class StepDefinition:
    """One step of a saga. `None` options fall back to the saga's `SagaConfig` defaults."""

    name: str
    action: StepFunction
    compensation: StepFunction | None = None
    depends_on: tuple[str, ...] = ()
    max_retries: int | None = None
    timeout_seconds: float | None = None
    retry_backoff: float | None = None
    compensation_retries: int | None = None
    #: The action is a coroutine function (derived; runs on the event loop).
    is_async: bool = field(init=False, compare=False)
    #: The compensation is a coroutine function (derived; False without one).
    compensation_is_async: bool = field(init=False, compare=False)
    #: The action takes a `session` argument: a transactional step, whose writes commit
    #: in the same transaction as its completion record (derived).
    wants_session: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        problem = name_problem(self.name)
        if problem is not None:
            raise SagaDefinitionError(f"a step name must be {NAME_RULE}, got {problem}")
        if not callable(self.action):
            raise SagaDefinitionError(f"step '{self.name}': action {self.action!r} is not callable")
        if self.compensation is not None and not callable(self.compensation):
            raise SagaDefinitionError(
                f"step '{self.name}': compensation {self.compensation!r} is not callable"
            )
        _check_count(self.name, "max_retries", self.max_retries)
        _check_count(self.name, "compensation_retries", self.compensation_retries)
        _check_positive(self.name, "timeout_seconds", self.timeout_seconds)
        _check_non_negative(self.name, "retry_backoff", self.retry_backoff)
        # Derived once here, not per run: both are read on every step execution.
        object.__setattr__(self, "is_async", is_async_callable(self.action))
        compensation = self.compensation
        is_async = compensation is not None and is_async_callable(compensation)
        object.__setattr__(self, "compensation_is_async", is_async)
        object.__setattr__(self, "wants_session", _accepts_session(self.action))


NAME_RULE = f"a non-empty str of at most {MAX_NAME_LENGTH} printable characters"


def name_problem(name: object) -> str | None:
    """None when `name` can name a saga or a step (see NAME_RULE: it is stored in a
    200-character column, shown in logs and diagrams, so no control characters, NUL or
    lone surrogates); else a short description of `name` for the error message."""
    if isinstance(name, str) and name and len(name) <= MAX_NAME_LENGTH and name.isprintable():
        return None
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        return f"{name[:40]!r}... ({len(name)} characters)"
    return f"{name!r:.80}"


def check_saga_name(name: object) -> str:
    """`name` when it can name a saga, else SagaDefinitionError saying why."""
    problem = name_problem(name)
    if problem is not None:
        raise SagaDefinitionError(f"a saga name must be {NAME_RULE}, got {problem}")
    assert isinstance(name, str)
    return name


def is_async_callable(function: StepFunction) -> bool:
    target = function
    while hasattr(target, "func"):  # functools.partial
        target = target.func
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - callables with an async __call__
    )


def _accepts_session(function: StepFunction) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "session" in parameters


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _check_count(step: str, option: str, value: int | None) -> None:
    if value is not None and not (isinstance(value, int) and _is_number(value) and value >= 0):
        raise SagaDefinitionError(f"step '{step}': {option} must be an int >= 0, got {value!r}")


def _check_non_negative(step: str, option: str, value: float | None) -> None:
    if value is not None and not (_is_number(value) and value >= 0):
        raise SagaDefinitionError(f"step '{step}': {option} must be >= 0, got {value!r}")


def _check_positive(step: str, option: str, value: float | None) -> None:
    if value is not None and not (_is_number(value) and value > 0):
        raise SagaDefinitionError(f"step '{step}': {option} must be > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    """A validated saga graph. Steps are kept in a topological order."""

    name: str
    steps: tuple[StepDefinition, ...]
    failure_strategy: ParallelFailureStrategy | None = None
    timeout_seconds: float | None = None
    _by_name: Mapping[str, StepDefinition] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {step.name: step for step in self.steps})

    def step(self, name: str) -> StepDefinition:
        return self._by_name[name]

    def dependents(self) -> dict[str, set[str]]:
        """For each step, the steps that directly depend on it."""
        result: dict[str, set[str]] = {step.name: set() for step in self.steps}
        for step in self.steps:
            for dependency in step.depends_on:
                result[dependency].add(step.name)
        return result

    def descendants(self, name: str) -> set[str]:
        """Every step that depends on `name`, directly or transitively."""
        dependents = self.dependents()
        seen: set[str] = set()
        stack = [name]
        while stack:
            for child in dependents[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return seen

    def to_mermaid(self) -> str:
        """A Mermaid flowchart of the steps and, dashed, the compensations.

        Solid arrows are forward dependencies; each compensation hangs off its step with a
        dotted arrow, and dotted arrows between compensations show their (reverse) order.
        """
        ids = {step.name: f"s{index}" for index, step in enumerate(self.steps)}
        lines = ["flowchart TD"]
        for step in self.steps:
            label = step.name
            if step.max_retries:
                label += f" (retries: {step.max_retries})"
            lines.append(f'    {ids[step.name]}["{_mermaid_text(label)}"]')
        for step in self.steps:
            lines.extend(f"    {ids[dep]} --> {ids[step.name]}" for dep in step.depends_on)
        compensated = [step for step in self.steps if step.compensation is not None]
        for step in compensated:
            assert step.compensation is not None
            comp_label = f"undo {step.name}: {_function_name(step.compensation)}"
            lines.append(f'    {ids[step.name]}_c(["{_mermaid_text(comp_label)}"])')
            lines.append(f"    {ids[step.name]} -.-> {ids[step.name]}_c")
        with_compensation = {step.name for step in compensated}
        for step in compensated:
            for dep in step.depends_on:
                if dep in with_compensation:
                    lines.append(f"    {ids[step.name]}_c -.-> {ids[dep]}_c")
        return "\n".join(lines) + "\n"


def _function_name(function: StepFunction) -> str:
    return str(getattr(function, "__name__", type(function).__name__))


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def build_definition(
    name: str,
    steps: Iterable[StepDefinition],
    *,
    failure_strategy: ParallelFailureStrategy | None = None,
    timeout_seconds: float | None = None,
) -> SagaDefinition:
    """Validate a graph and return it with its steps in topological order.

    Raises SagaDefinitionError naming the saga and the step for: a duplicate step name, a
    dependency on an unknown step, a step depending on itself, or a cycle; and naming the
    saga for a bad saga timeout or failure strategy (given as the enum or its value). A
    saga name that is not `NAME_RULE` is refused too.
    """
    check_saga_name(name)
    listed = list(steps)
    by_name: dict[str, StepDefinition] = {}
    for step in listed:
        if step.name in by_name:
            raise SagaDefinitionError(f"saga '{name}': duplicate step name '{step.name}'")
        by_name[step.name] = step
    for step in listed:
        for dependency in step.depends_on:
            if dependency == step.name:
                raise SagaDefinitionError(f"saga '{name}': step '{step.name}' depends on itself")
            if dependency not in by_name:
                raise SagaDefinitionError(
                    f"saga '{name}': step '{step.name}' depends on unknown step '{dependency}'"
                )
    if timeout_seconds is not None and (
        isinstance(timeout_seconds, bool)
        or not isinstance(timeout_seconds, int | float)
        or timeout_seconds <= 0
    ):
        raise SagaDefinitionError(
            f"saga '{name}': timeout_seconds must be > 0, got {timeout_seconds!r}"
        )
    return SagaDefinition(
        name=name,
        steps=tuple(_topological_order(name, listed)),
        failure_strategy=_parse_strategy(name, failure_strategy),
        timeout_seconds=timeout_seconds,
    )


def _parse_strategy(saga: str, value: object) -> ParallelFailureStrategy | None:
    """The strategy as the enum (the engine compares by identity); its value, in any case,
    is accepted too."""
    if value is None or isinstance(value, ParallelFailureStrategy):
        return value
    try:
        return ParallelFailureStrategy(str(value).lower())
    except ValueError:
        choices = ", ".join(s.value for s in ParallelFailureStrategy)
        raise SagaDefinitionError(
            f"saga '{saga}': failure_strategy must be one of {choices}, got {value!r}"
        ) from None


def _topological_order(saga: str, steps: list[StepDefinition]) -> list[StepDefinition]:
    """Kahn's algorithm, stable with respect to declaration order."""
    remaining = {step.name: set(step.depends_on) for step in steps}
    ordered: list[StepDefinition] = []
    done: set[str] = set()
    while remaining:
        ready = [s for s in steps if s.name in remaining and remaining[s.name] <= done]
        if not ready:
            cycle = " -> ".join(_find_cycle(remaining))
            raise SagaDefinitionError(f"saga '{saga}': dependency cycle {cycle}")
        for step in ready:
            ordered.append(step)
            done.add(step.name)
            del remaining[step.name]
    return ordered


def _find_cycle(remaining: dict[str, set[str]]) -> list[str]:
    start = next(iter(remaining))
    path: list[str] = []
    node = start
    while node not in path:
        path.append(node)
        node = next(dep for dep in sorted(remaining[node]) if dep in remaining)
    return [*path[path.index(node) :], node]
