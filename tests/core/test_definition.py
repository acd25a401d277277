"""Definition-time validation (each error names the saga and the step) and drawing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from sagaz import (
    ParallelFailureStrategy,
    Saga,
    SagaDefinitionError,
    action,
    compensate,
    registry,
)
from sagaz.definition import MAX_NAME_LENGTH, StepDefinition, build_definition
from sagaz.store.schema import saga_steps, sagas


async def noop(ctx: Mapping[str, Any]) -> None: ...


def test_unknown_dependency_declarative() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class Bad(Saga):
            saga_name = "def-unknown"

            @action("charge", depends_on=["reserve"])
            async def charge(self, ctx: Mapping[str, Any]) -> None: ...

    assert (
        str(caught.value) == "saga 'def-unknown': step 'charge' depends on unknown step 'reserve'"
    )


def test_unknown_dependency_imperative() -> None:
    saga = Saga(name="def-unknown-imp").add_step("a", noop)
    with pytest.raises(SagaDefinitionError, match="saga 'def-unknown-imp': step 'b' depends on"):
        saga.add_step("b", noop, depends_on=["missing"])
    assert [s.name for s in saga.definition.steps] == ["a"], "a refused step is not added"


def test_cycle() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class Cyclic(Saga):
            saga_name = "def-cycle"

            @action("a", depends_on=["c"])
            async def a(self, ctx: Mapping[str, Any]) -> None: ...

            @action("b", depends_on=["a"])
            async def b(self, ctx: Mapping[str, Any]) -> None: ...

            @action("c", depends_on=["b"])
            async def c(self, ctx: Mapping[str, Any]) -> None: ...

    message = str(caught.value)
    assert message.startswith("saga 'def-cycle': dependency cycle ")
    cycle = message.removeprefix("saga 'def-cycle': dependency cycle ").split(" -> ")
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["a", "b", "c"]


def test_cycle_next_to_valid_steps_names_only_the_cycle() -> None:
    steps = [
        StepDefinition("root", noop),
        StepDefinition("x", noop, depends_on=("root", "y")),
        StepDefinition("y", noop, depends_on=("x",)),
    ]
    with pytest.raises(SagaDefinitionError, match=r"cycle (x -> y -> x|y -> x -> y)$"):
        build_definition("def-cycle-2", steps)


def test_self_dependency() -> None:
    with pytest.raises(SagaDefinitionError, match="saga 'def-self': step 'a' depends on itself"):
        build_definition("def-self", [StepDefinition("a", noop, depends_on=("a",))])


def test_duplicate_step_name_declarative() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class Duplicate(Saga):
            saga_name = "def-dup"

            @action("a")
            async def first(self, ctx: Mapping[str, Any]) -> None: ...

            @action("a")
            async def second(self, ctx: Mapping[str, Any]) -> None: ...

    assert "saga 'def-dup': duplicate step name 'a'" in str(caught.value)
    assert "first" in str(caught.value)
    assert "second" in str(caught.value)


def test_duplicate_step_name_imperative() -> None:
    saga = Saga(name="def-dup-imp").add_step("a", noop)
    with pytest.raises(SagaDefinitionError, match="saga 'def-dup-imp': duplicate step name 'a'"):
        saga.add_step("a", noop)


def test_compensation_for_unknown_step() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class Orphan(Saga):
            saga_name = "def-orphan"

            @action("reserve")
            async def reserve(self, ctx: Mapping[str, Any]) -> None: ...

            @compensate("reserv")
            async def release(self, ctx: Mapping[str, Any]) -> None: ...

    assert str(caught.value) == (
        "saga 'def-orphan': compensation release is for unknown step 'reserv'"
    )


def test_two_compensations_for_one_step() -> None:
    with pytest.raises(SagaDefinitionError, match="saga 'def-two-comp': step 'a' has two"):

        class TwoCompensations(Saga):
            saga_name = "def-two-comp"

            @action("a")
            async def a(self, ctx: Mapping[str, Any]) -> None: ...

            @compensate("a")
            async def undo_one(self, ctx: Mapping[str, Any]) -> None: ...

            @compensate("a")
            async def undo_two(self, ctx: Mapping[str, Any]) -> None: ...


def test_missing_saga_name() -> None:
    with pytest.raises(SagaDefinitionError, match="NoName declares steps but no saga_name"):

        class NoName(Saga):
            @action("a")
            async def a(self, ctx: Mapping[str, Any]) -> None: ...


def test_imperative_saga_needs_a_name() -> None:
    with pytest.raises(SagaDefinitionError, match=r"needs a name: Saga\(name='...'\)"):
        Saga()
    with pytest.raises(SagaDefinitionError, match="non-empty str"):
        build_definition("", [StepDefinition("a", noop)])


def test_mixing_declarative_and_add_step() -> None:
    class Declared(Saga):
        saga_name = "def-mixed"

        @action("a")
        async def a(self, ctx: Mapping[str, Any]) -> None: ...

    with pytest.raises(SagaDefinitionError) as caught:
        Declared().add_step("b", noop)
    assert "saga 'def-mixed'" in str(caught.value)
    assert "add_step cannot be mixed in" in str(caught.value)


def test_declarative_saga_cannot_be_renamed() -> None:
    class Named(Saga):
        saga_name = "def-named"

        @action("a")
        async def a(self, ctx: Mapping[str, Any]) -> None: ...

    assert Named(name="def-named").name == "def-named"
    with pytest.raises(SagaDefinitionError, match="cannot be renamed to 'other'"):
        Named(name="other")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"max_retries": -1}, "max_retries must be an int >= 0, got -1"),
        ({"max_retries": 1.5}, "max_retries must be an int >= 0, got 1.5"),
        ({"max_retries": "3"}, "max_retries must be an int >= 0, got '3'"),
        ({"max_retries": True}, "max_retries must be an int >= 0, got True"),
        ({"compensation_retries": -2}, "compensation_retries must be an int >= 0"),
        ({"timeout_seconds": 0}, "timeout_seconds must be > 0, got 0"),
        ({"timeout_seconds": -1.0}, "timeout_seconds must be > 0"),
        ({"timeout_seconds": float("nan")}, "timeout_seconds must be > 0, got nan"),
        ({"timeout_seconds": "5"}, "timeout_seconds must be > 0, got '5'"),
        ({"retry_backoff": -0.1}, "retry_backoff must be >= 0, got -0.1"),
    ],
)
def test_bad_option_values_name_saga_and_step(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SagaDefinitionError) as caught:
        Saga(name="def-options").add_step("a", noop, **options)
    assert "saga 'def-options'" in str(caught.value)
    assert "step 'a'" in str(caught.value)
    assert fragment in str(caught.value)


def test_bad_option_values_on_a_declarative_step() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class BadOptions(Saga):
            saga_name = "def-options-decl"

            @action("a", max_retries=-1)
            async def a(self, ctx: Mapping[str, Any]) -> None: ...

    assert str(caught.value) == (
        "saga 'def-options-decl': step 'a': max_retries must be an int >= 0, got -1"
    )


def test_step_action_must_be_callable() -> None:
    with pytest.raises(SagaDefinitionError, match="saga 'def-call': step 'a': action 42"):
        Saga(name="def-call").add_step("a", 42)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="step 'b': compensation 'x' is not callable"):
        Saga(name="def-call-2").add_step("b", noop, "x")  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="non-empty str"):
        Saga(name="def-call-3").add_step("", noop)


def test_depends_on_must_be_a_list_not_a_string() -> None:
    with pytest.raises(SagaDefinitionError, match="step 'b': depends_on must be a list"):
        Saga(name="def-str-deps").add_step("a", noop).add_step("b", noop, depends_on="a")
    with pytest.raises(SagaDefinitionError, match="step 'b': depends_on must be a list"):
        action("b", depends_on="a")


@pytest.mark.parametrize("timeout", [0, -1, True])
def test_bad_saga_timeout(timeout: Any) -> None:
    with pytest.raises(
        SagaDefinitionError, match="saga 'def-timeout': timeout_seconds must be > 0"
    ):
        Saga(name="def-timeout", timeout_seconds=timeout).add_step("a", noop)


def test_bad_failure_strategy() -> None:
    with pytest.raises(SagaDefinitionError) as caught:
        Saga(name="def-strategy", failure_strategy="sometimes").add_step("a", noop)  # type: ignore[arg-type]
    assert "saga 'def-strategy': failure_strategy must be one of" in str(caught.value)
    assert "fail_fast_with_grace" in str(caught.value)


def test_class_level_options_reach_the_definition() -> None:
    class Configured(Saga):
        saga_name = "def-class-options"
        failure_strategy = ParallelFailureStrategy.WAIT_ALL
        timeout_seconds = 12.5

        @action("a", max_retries=2, timeout_seconds=3, retry_backoff=0.1, compensation_retries=1)
        async def a(self, ctx: Mapping[str, Any]) -> None: ...

    definition = Configured().definition
    assert definition.failure_strategy is ParallelFailureStrategy.WAIT_ALL
    assert definition.timeout_seconds == 12.5
    step = definition.step("a")
    assert (step.max_retries, step.timeout_seconds, step.retry_backoff) == (2, 3, 0.1)
    assert step.compensation_retries == 1


def test_steps_are_kept_in_topological_order() -> None:
    saga = (
        Saga(name="def-topo")
        .add_step("c_root", noop, depends_on=[])
        .add_step("a_root", noop, depends_on=[])
        .add_step("join", noop, depends_on=["a_root", "c_root"])
    )
    definition = build_definition(
        "def-topo-2",
        [
            StepDefinition("late", noop, depends_on=("early",)),
            StepDefinition("early", noop),
        ],
    )
    assert [s.name for s in saga.definition.steps] == ["c_root", "a_root", "join"]
    assert [s.name for s in definition.steps] == ["early", "late"]
    assert definition.descendants("early") == {"late"}
    assert definition.dependents() == {"early": {"late"}, "late": set()}


def test_subclass_inherits_and_extends_steps() -> None:
    class Base(Saga):
        saga_name = "def-base"

        @action("a")
        async def a(self, ctx: Mapping[str, Any]) -> None: ...

    class Extended(Base):
        saga_name = "def-extended"

        @action("b", depends_on=["a"])
        async def b(self, ctx: Mapping[str, Any]) -> None: ...

    assert [s.name for s in Base().definition.steps] == ["a"]
    assert [s.name for s in Extended().definition.steps] == ["a", "b"]


def test_a_base_class_without_steps_needs_no_name_and_does_not_register() -> None:
    from sagaz import registry

    before = set(registry.names())

    class Base(Saga):
        failure_strategy = ParallelFailureStrategy.WAIT_ALL

    class Concrete(Base):
        saga_name = "def-concrete"

        @action("a")
        async def a(self, ctx: Mapping[str, Any]) -> None: ...

    assert set(registry.names()) - before == {"def-concrete"}
    assert Concrete().definition.failure_strategy is ParallelFailureStrategy.WAIT_ALL


def test_a_saga_without_steps_has_no_definition() -> None:
    with pytest.raises(SagaDefinitionError, match="saga 'def-nothing' has no steps"):
        _ = Saga(name="def-nothing").definition


# -- drawing -----------------------------------------------------------------------------


def test_to_mermaid_draws_steps_dependencies_and_compensations() -> None:
    class Drawn(Saga):
        saga_name = "def-drawn"

        @action("reserve")
        async def reserve(self, ctx: Mapping[str, Any]) -> None: ...

        @compensate("reserve")
        async def release(self, ctx: Mapping[str, Any]) -> None: ...

        @action("charge", depends_on=["reserve"], max_retries=3)
        async def charge(self, ctx: Mapping[str, Any]) -> None: ...

        @compensate("charge")
        async def refund(self, ctx: Mapping[str, Any]) -> None: ...

        @action("notify", depends_on=["charge"])
        async def notify(self, ctx: Mapping[str, Any]) -> None: ...

    assert Drawn().to_mermaid() == (
        "flowchart TD\n"
        '    s0["reserve"]\n'
        '    s1["charge (retries: 3)"]\n'
        '    s2["notify"]\n'
        "    s0 --> s1\n"
        "    s1 --> s2\n"
        '    s0_c(["undo reserve: release"])\n'
        "    s0 -.-> s0_c\n"
        '    s1_c(["undo charge: refund"])\n'
        "    s1 -.-> s1_c\n"
        "    s1_c -.-> s0_c\n"
    )


def test_to_mermaid_escapes_quotes_and_names_callables() -> None:
    class Undo:
        async def __call__(self, ctx: Mapping[str, Any]) -> None: ...

    saga = Saga(name="def-quotes").add_step('say "hi"', noop, Undo())
    text = saga.to_mermaid()
    assert 's0["say #quot;hi#quot;"]' in text
    assert "undo say #quot;hi#quot;: Undo" in text


NAME_RULE = "must be a non-empty str of at most 200 printable characters"


def test_names_fit_the_schema_s_name_columns() -> None:
    assert MAX_NAME_LENGTH == 200
    assert sagas.c.name.type.length == MAX_NAME_LENGTH  # type: ignore[attr-defined]
    assert saga_steps.c.name.type.length == MAX_NAME_LENGTH  # type: ignore[attr-defined]
    longest = "s" * MAX_NAME_LENGTH
    saga = Saga(name=longest).add_step("é" * MAX_NAME_LENGTH, noop).add_step("with space", noop)
    assert saga.definition.name == longest


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("x" * 201, "'" + "x" * 40 + "'... (201 characters)"),
        ("a\x00b", "'a\\x00b'"),
        ("a\nb", "'a\\nb'"),
        ("tab\t", "'tab\\t'"),
        ("del\x7f", "'del\\x7f'"),
        ("\ud800", "'\\ud800'"),
        ("", "''"),
    ],
)
def test_bad_saga_and_step_names_are_refused_naming_saga_and_step(name: str, shown: str) -> None:
    with pytest.raises(SagaDefinitionError) as caught:
        Saga(name=name or None)
    if name:
        assert str(caught.value) == f"a saga name {NAME_RULE}, got {shown}"

    saga = Saga(name="def-names").add_step("ok", noop)
    with pytest.raises(SagaDefinitionError) as caught:
        saga.add_step(name, noop)
    assert str(caught.value) == f"saga 'def-names': a step name {NAME_RULE}, got {shown}"
    assert saga.step_names == ["ok"], "a refused step is not added"

    with pytest.raises(SagaDefinitionError) as caught:
        build_definition(name, [StepDefinition("a", noop)])
    assert str(caught.value) == f"a saga name {NAME_RULE}, got {shown}"


def test_bad_names_on_a_declarative_saga() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class BadName(Saga):
            saga_name = "order\r\n"

            @action("a")
            async def a(self, ctx: Mapping[str, Any]) -> None: ...

    assert str(caught.value).endswith(
        f"<locals>.BadName.saga_name: a saga name {NAME_RULE}, got 'order\\r\\n'"
    )
    assert "order\r\n" not in registry

    with pytest.raises(SagaDefinitionError) as caught:

        class BadStep(Saga):
            saga_name = "def-bad-step"

            @action("x" * 300)
            async def a(self, ctx: Mapping[str, Any]) -> None: ...

    assert str(caught.value).startswith(f"saga 'def-bad-step': a step name {NAME_RULE}, got 'xxx")
    assert str(caught.value).endswith("... (300 characters)")
    assert "def-bad-step" not in registry


def test_a_module_level_saga_with_a_bad_name_never_registers() -> None:
    namespace: dict[str, Any] = {"Saga": Saga}
    with pytest.raises(SagaDefinitionError, match="a saga name must be"):
        exec("saga = Saga(name='x' * 201)", namespace)  # a module body, as an import runs it
    assert not any(name.startswith("xxx") for name in registry.names())
