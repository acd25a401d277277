"""The site builds in strict mode, and its API reference documents every public name.

The public surface is `sagaz.__all__`, `sagaz.outbox.__all__` and the `__all__` of every
module directly under `sagaz.integrations` (found, not listed, so a new adapter needs a
reference page too), plus the modules a reference page renders besides those.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest

import sagaz.integrations
from sagaz.cli import main as sagaz_command
from sagaz.errors import MissingExtraError
from tests.docs.markdown_blocks import ROOT

REFERENCE = ROOT / "docs" / "reference"
_DIRECTIVE = re.compile(r"^::: (sagaz[\w.]*)\s*$", re.MULTILINE)


def integration_modules() -> list[str]:
    """`sagaz.integrations.<adapter>` for every public module or package under it."""
    return [
        f"sagaz.integrations.{info.name}"
        for info in pkgutil.iter_modules(sagaz.integrations.__path__)
        if not info.name.startswith("_")
    ]


def reference_pages() -> dict[str, Path]:
    """Module rendered with `::: module` -> the reference page rendering it."""
    return {
        name: page
        for page in sorted(REFERENCE.glob("*.md"))
        for name in _DIRECTIVE.findall(page.read_text(encoding="utf-8"))
    }


def documented_modules() -> list[str]:
    """The modules whose __all__ must be documented (not the single objects a page renders,
    such as `::: sagaz.registry.registry`)."""
    names = {"sagaz", "sagaz.outbox", *integration_modules(), *reference_pages()}
    return sorted(name for name in names if _is_module(name))


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent is not a package: `name` is an object
        return False


@functools.cache
def griffe_package() -> Any:
    """sagaz as griffe loads it for mkdocstrings (loaded once: it takes a moment)."""
    griffe = pytest.importorskip("griffe")
    return griffe.load("sagaz", search_paths=[str(ROOT)], resolve_aliases=True)


def public_names(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    assert names, f"{module.__name__} defines no __all__: its public surface is unknown"
    return list(names)


def built_page(site: Path, page: Path) -> str:
    return (site / "reference" / page.stem / "index.html").read_text(encoding="utf-8")


def test_the_site_builds_in_strict_mode(built_site: Path) -> None:
    assert (built_site / "index.html").is_file()
    assert (built_site / "migrating" / "index.html").is_file()


def test_every_public_module_has_a_reference_page() -> None:
    pages = reference_pages()
    missing = [
        name for name in ["sagaz", "sagaz.outbox", *integration_modules()] if name not in pages
    ]
    assert missing == [], f"no `::: module` line in docs/reference/*.md for {missing}"


def griffe_member(module_name: str, name: str) -> Any:
    """The object griffe (so mkdocstrings) documents for `module_name.name`.

    A package attribute that shadows a submodule of the same name (`sagaz.registry` is the
    `registry` instance of the module `sagaz/registry.py`) is the submodule to griffe;
    then the attribute of that submodule is the one meant."""
    package = griffe_package()
    module = package[module_name.removeprefix("sagaz.")] if module_name != "sagaz" else package
    member = module[name]
    member = member.final_target if member.is_alias else member
    runtime = getattr(importlib.import_module(module_name), name)
    if member.is_module and not isinstance(runtime, ModuleType) and name in member.members:
        member = member[name]
        member = member.final_target if member.is_alias else member
    return member


@pytest.mark.parametrize("module_name", documented_modules())
def test_reference_lists_every_public_name(built_site: Path, module_name: str) -> None:
    module = import_or_skip(module_name)
    every_page = "".join(built_page(built_site, page) for page in sorted(REFERENCE.glob("*.md")))
    missing = []
    for name in public_names(module):
        # A submodule in __all__ (sagaz.outbox) is documented on its own page; a shadowed
        # submodule's attribute under its own path (sagaz.registry.registry).
        ids = {f'id="{module_name}.{name}"', f'id="{griffe_member(module_name, name).path}"'}
        if not any(anchor in every_page for anchor in ids):
            missing.append(name)
    assert missing == [], f"{module_name}: not in the API reference: {missing}"


@pytest.mark.parametrize("module_name", documented_modules())
def test_every_public_name_has_a_docstring(module_name: str) -> None:
    module = import_or_skip(module_name)
    undocumented = []
    for name in public_names(module):
        docstring = griffe_member(module_name, name).docstring
        if docstring is None or not docstring.value.strip():
            undocumented.append(name)
    assert undocumented == [], f"{module_name}: public names without a docstring: {undocumented}"


def import_or_skip(module_name: str) -> ModuleType:
    """The module; skipped (with the extra to install) when its framework is missing."""
    try:
        return importlib.import_module(module_name)
    except MissingExtraError as error:
        pytest.skip(str(error))
    except ImportError as error:  # a module of an adapter importing its framework directly
        pytest.skip(f"{module_name}: {error} (install sagaz[integrations])")


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}".strip()
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, path))
    return found


def test_cli_reference_lists_every_command_and_option(built_site: Path) -> None:
    html = (built_site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert _commands(sagaz_command), "the sagaz command has subcommands"
    missing = []
    for path, command in _commands(sagaz_command):
        if f"sagaz {path}" not in html:
            missing.append(f"sagaz {path}")
        for parameter in command.params:
            if isinstance(parameter, click.Option) and not parameter.hidden:
                missing.extend(
                    f"sagaz {path} {option}" for option in parameter.opts if option not in html
                )
    assert missing == [], f"not in docs/reference/cli.md's page: {missing}"


def test_links_out_of_docs_are_checked_and_rendered_as_repository_paths(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = importlib.util.spec_from_file_location(
        "mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py"
    )
    assert spec is not None
    assert spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)

    class Page:
        class file:
            src_path = "fastapi.md"

    config = {"docs_dir": str(ROOT / "docs")}
    text = "[the example](../examples/integrations/README.md) and [sagas](sagas.md)"
    rendered = hooks.on_page_markdown(text, page=Page, config=config, files=None)
    assert rendered == (
        "the example (`examples/integrations/README.md` in the repository) and [sagas](sagas.md)"
    )
    with caplog.at_level("WARNING", logger="mkdocs.plugins.sagaz"):
        hooks.on_page_markdown("[x](../examples/nowhere.md)", page=Page, config=config, files=None)
    assert "links to '../examples/nowhere.md'" in caplog.text
