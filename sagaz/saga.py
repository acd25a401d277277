"""Defining sagas: the declarative `Saga` subclass and the imperative `add_step` builder.

Declarative::

    class OrderSaga(Saga):
        saga_name = "order"

        @action("reserve")
        async def reserve(self, ctx): ...

        @compensate("reserve")
        async def release(self, ctx): ...

        @action("charge", depends_on=["reserve"], max_retries=3)
        async def charge(self, ctx): ...

Imperative (steps without `depends_on` follow the previous step, so a chain reads top to
bottom; pass `depends_on=[]` for a step with no dependency)::

    order = Saga(name="order").add_step("reserve", reserve, release).add_step("charge", charge)

A declarative step with no `depends_on` has no dependency: declared steps form a graph.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from sagaz.definition import (
    SagaDefinition,
    StepDefinition,
    StepFunction,
    build_definition,
    check_saga_name,
)
from sagaz.errors import SagaDefinitionError
from sagaz.registry import registry
from sagaz.types import ParallelFailureStrategy, SagaResult

if TYPE_CHECKING:
    from sagaz.config import SagaConfig
    from sagaz.journal import Fence, SagaJournal, TransitionListener

F = TypeVar("F", bound=Callable[..., Any])

_ACTION_ATTR = "__sagaz_action__"
_COMPENSATION_ATTR = "__sagaz_compensation__"


@dataclass(frozen=True, slots=True)
class _ActionMark:
    name: str
    depends_on: tuple[str, ...]
    max_retries: int | None
    timeout_seconds: float | None
    retry_backoff: float | None
    compensation_retries: int | None


def action(
    name: str,
    *,
    depends_on: Iterable[str] | None = None,
    max_retries: int | None = None,
    timeout_seconds: float | None = None,
    retry_backoff: float | None = None,
    compensation_retries: int | None = None,
) -> Callable[[F], F]:
    """Mark a method of a `Saga` subclass as the action of step `name`.

    `max_retries` is the number of retries after the first attempt; `retry_backoff` the
    base delay in seconds (doubled each retry, with jitter); `timeout_seconds` bounds each
    attempt. Unset options take the saga config's defaults.
    """
    if isinstance(depends_on, str):
        raise SagaDefinitionError(
            f"step '{name}': depends_on must be a list of step names, not the str {depends_on!r}"
        )
    mark = _ActionMark(
        name=name,
        depends_on=tuple(depends_on or ()),
        max_retries=max_retries,
        timeout_seconds=timeout_seconds,
        retry_backoff=retry_backoff,
        compensation_retries=compensation_retries,
    )

    def decorate(function: F) -> F:
        setattr(function, _ACTION_ATTR, mark)
        return function

    return decorate


def compensate(step_name: str) -> Callable[[F], F]:
    """Mark a method of a `Saga` subclass as the compensation that undoes `step_name`."""

    def decorate(function: F) -> F:
        setattr(function, _COMPENSATION_ATTR, step_name)
        return function

    return decorate


class Saga:
    """A saga definition that can run in-process (`run`) or durably through a worker.

    Subclasses declare steps with `@action`/`@compensate` and a `saga_name`; they register
    in the saga registry when the class is created. An imperative saga (`Saga(name=...)`
    with `add_step`) registers when it is built at module level, or by calling `register()`.
    """

    saga_name: ClassVar[str | None] = None
    failure_strategy: ClassVar[ParallelFailureStrategy | None] = None
    timeout_seconds: ClassVar[float | None] = None
    _declared_steps: ClassVar[tuple[StepDefinition, ...]] = ()
    _declared_methods: ClassVar[dict[str, tuple[str, str | None]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        actions: dict[str, tuple[str, _ActionMark]] = {}
        compensations: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attribute, value in vars(klass).items():
                mark = getattr(value, _ACTION_ATTR, None)
                if isinstance(mark, _ActionMark):
                    if mark.name in actions and actions[mark.name][0] != attribute:
                        raise SagaDefinitionError(
                            f"saga '{cls.saga_name or cls.__qualname__}': duplicate step name "
                            f"'{mark.name}' (methods {actions[mark.name][0]} and {attribute})"
                        )
                    actions[mark.name] = (attribute, mark)
                target = getattr(value, _COMPENSATION_ATTR, None)
                if isinstance(target, str):
                    if target in compensations and compensations[target] != attribute:
                        raise SagaDefinitionError(
                            f"saga '{cls.saga_name or cls.__qualname__}': step '{target}' has "
                            f"two compensations ({compensations[target]} and {attribute})"
                        )
                    compensations[target] = attribute
        if not actions and not compensations:
            return
        saga_name = cls.saga_name
        if not saga_name:
            raise SagaDefinitionError(
                f"{cls.__qualname__} declares steps but no saga_name; set saga_name = '...' "
                "(the name workers use to find the saga)"
            )
        try:
            check_saga_name(saga_name)
        except SagaDefinitionError as error:
            raise SagaDefinitionError(f"{cls.__qualname__}.saga_name: {error}") from None
        for step_name in compensations:
            if step_name not in actions:
                raise SagaDefinitionError(
                    f"saga '{saga_name}': compensation {compensations[step_name]} is for "
                    f"unknown step '{step_name}'"
                )
        steps = [
            _step_definition(
                saga_name,
                name=step_name,
                action=getattr(cls, attribute),
                compensation=(
                    getattr(cls, compensations[step_name]) if step_name in compensations else None
                ),
                depends_on=mark.depends_on,
                max_retries=mark.max_retries,
                timeout_seconds=mark.timeout_seconds,
                retry_backoff=mark.retry_backoff,
                compensation_retries=mark.compensation_retries,
            )
            for step_name, (attribute, mark) in actions.items()
        ]
        definition = build_definition(
            saga_name,
            steps,
            failure_strategy=cls.failure_strategy,
            timeout_seconds=cls.timeout_seconds,
        )
        cls._declared_steps = definition.steps
        cls._declared_methods = {
            step_name: (attribute, compensations.get(step_name))
            for step_name, (attribute, _mark) in actions.items()
        }
        registry.register(saga_name, cls)

    def __init__(
        self,
        name: str | None = None,
        *,
        config: SagaConfig | None = None,
        failure_strategy: ParallelFailureStrategy | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        declarative = bool(type(self)._declared_steps)
        if declarative and name is not None and name != type(self).saga_name:
            raise SagaDefinitionError(
                f"{type(self).__qualname__} is declarative (saga_name "
                f"'{type(self).saga_name}'); it cannot be renamed to '{name}'"
            )
        resolved_name = name or type(self).saga_name
        if not resolved_name:
            raise SagaDefinitionError("an imperative saga needs a name: Saga(name='...')")
        self.name: str = check_saga_name(resolved_name)
        self.config = config
        self._failure_strategy = failure_strategy or type(self).failure_strategy
        self._timeout_seconds = (
            timeout_seconds if timeout_seconds is not None else type(self).timeout_seconds
        )
        self._steps: list[StepDefinition] = [self._bind(step) for step in self._declared_steps]
        self._definition: SagaDefinition | None = None
        # Built at module level: registered now and again after each add_step, so the
        # registry can compare it with another saga of the same name once it has steps.
        self._registers_as_built = False
        if declarative:
            self._definition = self._build()
        elif _called_from_module_level(self):
            self._registers_as_built = True
            self.register()

    def _bind(self, step: StepDefinition) -> StepDefinition:
        action_attr, compensation_attr = self._declared_methods[step.name]
        return replace(
            step,
            action=getattr(self, action_attr),
            compensation=getattr(self, compensation_attr) if compensation_attr else None,
        )

    @property
    def is_declarative(self) -> bool:
        return bool(type(self)._declared_steps)

    @property
    def step_names(self) -> list[str]:
        """The names of the steps defined so far, in the order they were added."""
        return [step.name for step in self._steps]

    @property
    def is_being_built(self) -> bool:
        """True for an imperative saga built at module level: its steps may still come."""
        return self._registers_as_built

    def add_step(
        self,
        name: str,
        action: StepFunction,
        compensation: StepFunction | None = None,
        *,
        depends_on: Iterable[str] | None = None,
        max_retries: int | None = None,
        timeout_seconds: float | None = None,
        retry_backoff: float | None = None,
        compensation_retries: int | None = None,
    ) -> Saga:
        """Append a step and return the saga, so calls chain.

        `depends_on=None` makes the step follow the previously added one; `[]` gives it no
        dependency. Raises SagaDefinitionError for a duplicate name or an unknown
        dependency (dependencies must be added first), and on a declarative saga.
        """
        if self.is_declarative:
            raise SagaDefinitionError(
                f"saga '{self.name}' declares its steps with @action; add_step cannot be mixed in"
            )
        if isinstance(depends_on, str):
            raise SagaDefinitionError(
                f"saga '{self.name}': step '{name}': depends_on must be a list of step names"
            )
        if depends_on is None:
            dependencies: tuple[str, ...] = (self._steps[-1].name,) if self._steps else ()
        else:
            dependencies = tuple(depends_on)
        step = _step_definition(
            self.name,
            name=name,
            action=action,
            compensation=compensation,
            depends_on=dependencies,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            retry_backoff=retry_backoff,
            compensation_retries=compensation_retries,
        )
        self._definition = build_definition(
            self.name,
            [*self._steps, step],
            failure_strategy=self._failure_strategy,
            timeout_seconds=self._timeout_seconds,
        )
        self._steps.append(step)
        if self._registers_as_built:
            self.register()
        return self

    def _build(self) -> SagaDefinition:
        return build_definition(
            self.name,
            self._steps,
            failure_strategy=self._failure_strategy,
            timeout_seconds=self._timeout_seconds,
        )

    @property
    def definition(self) -> SagaDefinition:
        """The validated graph. Raises SagaDefinitionError for a saga with no steps."""
        if self._definition is None or not self._definition.steps:
            raise SagaDefinitionError(f"saga '{self.name}' has no steps")
        return self._definition

    def register(self) -> Saga:
        """Register this (imperative) saga under its name so workers can resume it."""
        registry.register(self.name, self if not self.is_declarative else type(self))
        return self

    def fingerprint(self) -> tuple[object, ...]:
        """What makes two imperative sagas the same definition (names, graph, functions)."""
        return tuple(
            (
                step.name,
                step.depends_on,
                _qualified_name(step.action),
                _qualified_name(step.compensation) if step.compensation else None,
                step.max_retries,
                step.timeout_seconds,
                step.retry_backoff,
                step.compensation_retries,
            )
            for step in self._steps
        )

    def to_mermaid(self) -> str:
        """A Mermaid flowchart of the saga, compensations included."""
        return self.definition.to_mermaid()

    async def run(
        self,
        context: Mapping[str, Any] | None = None,
        *,
        saga_id: str | None = None,
        journal: SagaJournal | None = None,
        fence: Fence | None = None,
        listeners: Iterable[TransitionListener] = (),
    ) -> SagaResult:
        """Run the saga to completion in this process and return its result.

        A failed step triggers compensation of the completed steps; the result is then
        COMPENSATED (or FAILED if a compensation failed too) - `run` does not raise for
        that. It raises InvalidContextError for a context that is not JSON before any step
        runs, SagaDefinitionError for an empty saga, and LeaseLostError when a fenced
        journal refuses a write.

        With a `journal` that already holds `saga_id`, the run resumes: completed steps'
        results are loaded, not re-executed.

        With a config that has a database (initialised with a `database_url`) and no
        `journal` or `fence` given, the run is durable and holds a worker's lease from
        its first write to its last (`SagaWorker.run_here`): no `sagaz worker` claims it
        while it runs here, and if this process dies a worker resumes it once the lease
        (`lease_seconds`) expired. It also raises LeaseLostError when another worker
        holds the saga `saga_id`.
        """
        from sagaz.config import get_config
        from sagaz.engine import SagaEngine

        config = self.config or get_config()
        if journal is None and fence is None and config.initialized and config.database_url:
            from sagaz.worker.in_process import run_in_process

            return await run_in_process(
                config, self.definition, context or {}, saga_id=saga_id, listeners=listeners
            )
        engine = SagaEngine(
            journal=journal if journal is not None else config.journal(),
            options=config.run_options(),
            listeners=(*config.listeners, *listeners),
        )
        return await engine.run(
            self.definition,
            context or {},
            saga_id=saga_id or str(uuid.uuid4()),
            fence=fence,
        )


def _step_definition(saga: str, **options: Any) -> StepDefinition:
    """A StepDefinition whose errors (bad option values) also name the saga."""
    try:
        return StepDefinition(**options)
    except SagaDefinitionError as error:
        raise SagaDefinitionError(f"saga '{saga}': {error}") from None


def _qualified_name(function: StepFunction) -> str:
    module = getattr(function, "__module__", "?")
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"


def _called_from_module_level(saga: Saga) -> bool:
    """True when the saga's constructor was called from a module body (import time)."""
    frame = sys._getframe(2)
    while (
        frame is not None
        and frame.f_code.co_name == "__init__"
        and (frame.f_locals.get("self") is saga)
    ):
        frame = frame.f_back  # type: ignore[assignment]
    return frame is not None and frame.f_code.co_name == "<module>"
