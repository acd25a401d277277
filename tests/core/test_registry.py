"""The saga registry: name -> definition, so a worker can resume a saga by name."""

from __future__ import annotations

import gc
import importlib.util
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sagaz import Saga, SagaRegistryError, SagaStatus, UnknownSagaError, action, registry
from sagaz.registry import SagaRegistry


@pytest.fixture
def load_module(tmp_path: Path) -> Iterator[Any]:
    """Import Python source as a fresh module (as a worker importing the app would)."""
    loaded: list[str] = []

    def load(source: str, name: str | None = None) -> ModuleType:
        """Import `source` as module `name` (a new name unless given: give the name of an
        earlier module to import it again, as a reload or a second import would)."""
        name = name or f"sagaz_registry_case_{uuid.uuid4().hex}"
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loaded.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


def test_declarative_saga_registers_when_defined() -> None:
    class Registered(Saga):
        saga_name = "reg-declared"

        @action("a")
        async def a(self, ctx: Mapping[str, Any]) -> None: ...

    assert "reg-declared" in registry
    assert "reg-declared" in registry.names()
    resolved = registry.resolve("reg-declared")
    assert isinstance(resolved, Registered)
    assert resolved is not registry.resolve("reg-declared"), "a fresh instance each time"


def test_two_different_classes_under_one_name_are_refused() -> None:
    class First(Saga):
        saga_name = "reg-clash"

        @action("a")
        async def a(self, ctx: Mapping[str, Any]) -> None: ...

    with pytest.raises(SagaRegistryError) as caught:

        class Second(Saga):
            saga_name = "reg-clash"

            @action("a")
            async def a(self, ctx: Mapping[str, Any]) -> None: ...

    message = str(caught.value)
    assert "saga name 'reg-clash' is already registered" in message
    assert "First" in message
    assert "Second" in message
    assert isinstance(registry.resolve("reg-clash"), First)


def test_re_registering_the_same_class_is_fine() -> None:
    def define() -> type[Saga]:
        class Again(Saga):  # same module and qualified name each time: a re-import
            saga_name = "reg-again"

            @action("a")
            async def a(self, ctx: Mapping[str, Any]) -> None: ...

        return Again

    first = define()
    registry.register("reg-again", first)
    second = define()
    assert first is not second
    assert isinstance(registry.resolve("reg-again"), second)


def test_module_level_imperative_saga_registers(load_module: Any) -> None:
    module = load_module(
        """
        from sagaz import Saga

        def reserve(ctx):
            return {"reserved": True}

        order = Saga(name="reg-imperative").add_step("reserve", reserve)
        """
    )
    assert "reg-imperative" in registry
    assert registry.resolve("reg-imperative") is module.order


def test_reloading_a_module_with_an_imperative_saga_is_fine(load_module: Any) -> None:
    module = load_module(
        """
        from sagaz import Saga

        def reserve(ctx): ...
        def charge(ctx): ...

        order = Saga(name="reg-reload")
        order.add_step("reserve", reserve)
        order.add_step("charge", charge)
        """
    )
    first = module.order
    assert registry.resolve("reg-reload") is first
    reloaded = load_module(Path(module.__file__).read_text(), name=module.__name__)
    assert reloaded.order is not first
    assert registry.resolve("reg-reload") is reloaded.order
    assert reloaded.order.step_names == ["reserve", "charge"]


def test_module_level_saga_that_diverges_from_the_registered_one_is_refused(
    load_module: Any,
) -> None:
    module = load_module(
        """
        from sagaz import Saga

        def reserve(ctx): ...
        def charge(ctx): ...

        order = Saga(name="reg-diverge").add_step("reserve", reserve).add_step("charge", charge)
        """
    )
    changed = (
        Path(module.__file__)
        .read_text()
        .replace('add_step("charge", charge)', 'add_step("charge", reserve)')
    )
    with pytest.raises(SagaRegistryError) as caught:
        load_module(changed, name=module.__name__)
    assert "imperative saga with steps ['reserve', 'charge']" in str(caught.value)


def test_imperative_saga_built_in_a_function_does_not_register() -> None:
    def build() -> Saga:
        return Saga(name="reg-local").add_step("a", lambda ctx: None)

    saga = build()
    assert "reg-local" not in registry
    saga.register()
    assert registry.resolve("reg-local") is saga


def test_two_different_imperative_sagas_under_one_name_are_refused(load_module: Any) -> None:
    load_module(
        """
        from sagaz import Saga

        def reserve(ctx): ...

        saga = Saga(name="reg-imp-clash").add_step("reserve", reserve)
        """
    )
    with pytest.raises(SagaRegistryError, match="'reg-imp-clash' is already registered"):
        load_module(
            """
            from sagaz import Saga

            def charge(ctx): ...

            saga = Saga(name="reg-imp-clash").add_step("charge", charge)
            """
        )


def test_an_imperative_saga_cannot_take_a_declarative_saga_s_name(load_module: Any) -> None:
    class Declared(Saga):
        saga_name = "reg-mixed-clash"

        @action("a")
        async def a(self, ctx: Mapping[str, Any]) -> None: ...

    with pytest.raises(SagaRegistryError, match=r"class .*Declared"):
        Saga(name="reg-mixed-clash").add_step("a", lambda ctx: None).register()
    with pytest.raises(SagaRegistryError, match=r"class .*Declared"):
        load_module(
            """
            from sagaz import Saga

            saga = Saga(name="reg-mixed-clash")
            """
        )


def test_identical_imperative_definitions_may_register_twice() -> None:
    def step(ctx: Mapping[str, Any]) -> None: ...

    first = Saga(name="reg-same").add_step("a", step).register()
    second = Saga(name="reg-same").add_step("a", step).register()
    assert registry.resolve("reg-same") is second
    assert first.fingerprint() == second.fingerprint()


def test_different_options_make_a_different_imperative_saga() -> None:
    def step(ctx: Mapping[str, Any]) -> None: ...

    Saga(name="reg-options").add_step("a", step).register()
    with pytest.raises(SagaRegistryError):
        Saga(name="reg-options").add_step("a", step, max_retries=3).register()


def test_resolving_an_unknown_name() -> None:
    with pytest.raises(UnknownSagaError) as caught:
        registry.resolve("reg-nobody")
    assert "no saga named 'reg-nobody'" in str(caught.value)
    assert isinstance(caught.value, LookupError)


async def test_a_resolved_saga_runs() -> None:
    class Runnable(Saga):
        saga_name = "reg-runnable"

        @action("a")
        async def a(self, ctx: Mapping[str, Any]) -> dict[str, int]:
            return {"n": ctx["n"] + 1}

    result = await registry.resolve("reg-runnable").run({"n": 1})
    assert result.status is SagaStatus.COMPLETED
    assert result.context == {"n": 2}


def test_isolated_restores_entries() -> None:
    own = SagaRegistry()
    saga = Saga(name="reg-iso").add_step("a", lambda ctx: None)
    own.register("kept", saga)
    with own.isolated() as inner:
        assert inner is own
        own.register("temporary", saga)
        own.unregister("kept")
        assert own.names() == ["temporary"]
    assert own.names() == ["kept"]
    own.unregister("missing")  # unregistering an unknown name is harmless


def test_a_module_level_saga_that_stops_short_of_the_registered_one_is_refused(
    load_module: Any,
) -> None:
    """Steps that are a strict prefix of the registered saga's wait while the saga may
    still be built; once it stopped short, every lookup of the name refuses to choose."""
    first = load_module(
        """
        from sagaz import Saga

        def reserve(ctx): ...
        def charge(ctx): ...

        order = Saga(name="reg-prefix").add_step("reserve", reserve).add_step("charge", charge)
        """
    )
    second = load_module(
        f"""
        from sagaz import Saga
        from {first.__name__} import reserve

        short = Saga(name="reg-prefix").add_step("reserve", reserve)
        """
    )
    expected = (
        "saga name 'reg-prefix' is registered to imperative saga with steps "
        "['reserve', 'charge'], and another imperative saga with steps ['reserve'] was built"
    )
    with pytest.raises(SagaRegistryError, match=re.escape(expected)):
        registry.resolve("reg-prefix")
    with pytest.raises(SagaRegistryError, match=re.escape(expected)):
        registry.source("reg-prefix")
    with pytest.raises(SagaRegistryError, match=re.escape(expected)):
        _ = "reg-prefix" in registry
    assert "reg-prefix" in registry.names(), "listing names still works"

    del second.short  # the short saga is gone: no more doubt about the name
    gc.collect()
    assert registry.resolve("reg-prefix") is first.order


def test_reloading_a_module_whose_saga_lost_its_last_step_is_refused(load_module: Any) -> None:
    module = load_module(
        """
        from sagaz import Saga

        def reserve(ctx): ...
        def charge(ctx): ...

        order = Saga(name="reg-shorter").add_step("reserve", reserve).add_step("charge", charge)
        """
    )
    shorter = Path(module.__file__).read_text().replace('.add_step("charge", charge)', "")
    reloaded = load_module(shorter, name=module.__name__)
    assert reloaded.order.step_names == ["reserve"]
    with pytest.raises(SagaRegistryError, match="stopped short of the registered saga"):
        registry.resolve("reg-shorter")


def test_a_saga_built_over_several_statements_is_not_refused_once_complete(
    load_module: Any,
) -> None:
    source = """
        from sagaz import Saga, registry

        def reserve(ctx): ...
        def charge(ctx): ...

        order = Saga(name="reg-steps")
        order.add_step("reserve", reserve)
        order.add_step("charge", charge)
        assert registry.resolve("reg-steps") is order
        """
    module = load_module(source)
    again = load_module(source, name=module.__name__)
    assert registry.resolve("reg-steps") is again.order


def test_only_the_registered_saga_or_an_identical_one_passes_the_check() -> None:
    def step(ctx: Mapping[str, Any]) -> None: ...

    def other(ctx: Mapping[str, Any]) -> None: ...

    registered = Saga(name="reg-check").add_step("a", step).register()
    registry.check_registered("reg-check", registered)
    registry.check_registered("reg-check", Saga(name="reg-check").add_step("a", step))
    impostor = Saga(name="reg-check").add_step("a", other)
    with pytest.raises(SagaRegistryError) as caught:
        registry.check_registered("reg-check", impostor)
    assert str(caught.value).startswith(
        "saga name 'reg-check' is registered to imperative saga with steps ['a'], not to the "
        "given imperative saga with steps ['a']; a worker would run the registered one"
    )
    with pytest.raises(UnknownSagaError):
        registry.check_registered("reg-nobody", impostor)

    class Declared(Saga):
        saga_name = "reg-check-class"

        @action("a")
        async def a(self, ctx: Mapping[str, Any]) -> None: ...

    registry.check_registered("reg-check-class", Declared)
    registry.check_registered("reg-check-class", Declared())
    with pytest.raises(SagaRegistryError, match=r"registered to class .*Declared, not to"):
        registry.check_registered(
            "reg-check-class", Saga(name="reg-check-class").add_step("a", step)
        )
