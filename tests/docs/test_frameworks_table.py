"""docs/frameworks.md's table stays true: every name, command, option, extra and settings
key it shows in backticks exists in the code as it is."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import tomllib
from dataclasses import fields
from typing import Any

import click
import pytest

from sagaz.cli import main as sagaz_command
from sagaz.config import SagaConfig
from tests.docs.markdown_blocks import ROOT

PAGE = ROOT / "docs" / "frameworks.md"
COLUMNS = ("FastAPI", "Flask", "Django")
_DOTTED = re.compile(r"^sagaz(\.[A-Za-z_]\w*)+$")
_SPAN = re.compile(r"`([^`]+)`")


def table_rows() -> list[list[str]]:
    """The table's rows (header and separator excluded), as lists of cells."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in PAGE.read_text(encoding="utf-8").splitlines()
        if line.startswith("|")
    ]
    assert rows[0] == ["Task", *COLUMNS], "the table's header changed"
    return rows[2:]


def resolve(dotted: str) -> Any:
    """Import the longest module prefix of `dotted`, then get the attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            if importlib.util.find_spec(module_name) is None:
                continue
        except ImportError:
            continue
        target: Any = importlib.import_module(module_name)
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return target
    raise ImportError(dotted)


def django_command(name: str) -> click.Command | None:
    """sagaz's management command `name` as its click command; None for Django's own."""
    module_name = f"sagaz.integrations.django.management.commands.{name}"
    if name in ("migrate", "test", "shell"):
        return None
    module = importlib.import_module(module_name)
    command: click.Command = module.Command.click_command
    return command


def check_cli(words: list[str], group: click.Command) -> None:
    """`words` is a command line below `group`: its subcommands and options exist."""
    command = group
    for word in words:
        if word in ("...",) or (not word.startswith("-") and not isinstance(command, click.Group)):
            continue
        if word.startswith("-"):
            known = {
                opt for param in command.params for opt in [*param.opts, *param.secondary_opts]
            }
            assert word.split("=")[0] in known, f"{command.name} has no option {word}"
        else:
            assert isinstance(command, click.Group)
            assert word in command.commands, f"no command {word!r} in {command.name}"
            command = command.commands[word]


def check_span(span: str) -> str | None:
    """Check one code span; return the kind it was checked as, None if not checkable."""
    text = span.strip()
    if _DOTTED.match(text):
        resolve(text)
        return "name"
    words = shlex.split(text.replace("...", "x")) if not text.endswith("(") else []
    if words[:2] == ["pip", "install"]:
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]
        (requested,) = re.findall(r"sagaz\[([\w,]+)\]", text)
        for extra in requested.split(","):
            assert extra in extras, f"no extra {extra!r} in pyproject.toml"
        return "extra"
    if words[:1] == ["sagaz"]:
        check_cli(words[1:], sagaz_command)
        return "command"
    if words[:2] == ["flask", "sagaz"]:
        from sagaz.integrations.flask import sagaz_cli

        check_cli(words[2:], sagaz_cli)
        return "command"
    if words[:2] == ["python", "manage.py"]:
        command = django_command(words[2])
        if command is not None:
            check_cli(words[3:], command)
        return "command"
    if match := re.fullmatch(r"SAGAZ_([A-Z_]+)(=\S+)?", text):
        from sagaz.integrations.flask.settings import SETTING_KEYS as FLASK_KEYS

        fields_ = {spec.name.upper() for spec in fields(SagaConfig) if spec.init}
        keys = {key.removeprefix("SAGAZ_") for key in FLASK_KEYS}
        assert match[1] in fields_ | keys, f"{text}: not a sagaz setting"
        return "setting"
    if match := re.fullmatch(r'SAGAZ\["([A-Z_]+)"\]', text) or re.match(
        r'SAGAZ = \{"([A-Z_]+)"', text
    ):
        from sagaz.integrations.django import conf

        assert match[1] in conf.SETTING_KEYS, f"{text}: not a settings.SAGAZ key"
        return "setting"
    if quoted := re.findall(r'"(sagaz(?:\.\w+)+)"', text):  # INSTALLED_APPS, include(...)
        for dotted in quoted:
            resolve(dotted)
        return "name"
    if match := re.fullmatch(r"SagaConfig\((\w+)=.*\)", text):
        assert match[1] in {spec.name for spec in fields(SagaConfig)}, text
        return "setting"
    if match := re.search(r"create_lifespan\((.*)\)", text):
        from sagaz.integrations.fastapi import create_lifespan

        for keyword in re.findall(r"(\w+)=", match[1]):
            assert keyword in create_lifespan.__code__.co_varnames, f"{text}: no {keyword}"
        return "name"
    return None


ROWS = table_rows()


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_every_checkable_span_exists(row: list[str]) -> None:
    for column, cell in zip(COLUMNS, row[1:], strict=True):
        checked = []
        for span in _SPAN.findall(cell):
            try:
                kind = check_span(span)
            except (ImportError, AttributeError, AssertionError) as error:
                pytest.fail(f"{row[0]} / {column}: `{span}`: {error!r}")
            if kind:
                checked.append(kind)
        assert checked, f"{row[0]} / {column}: no name, command or setting the test can check"


def test_the_table_covers_the_issue_rows() -> None:
    tasks = {row[0] for row in ROWS}
    for task in (
        "Install",
        "Settings",
        "Start a saga",
        "Add an event",
        "Run a saga in process",
        "Run the worker",
        "Correlation id",
        "Health",
        "Metrics",
        "Testing",
    ):
        assert task in tasks


def test_a_wrong_name_or_option_is_caught() -> None:
    with pytest.raises((ImportError, AttributeError)):
        check_span("sagaz.integrations.fastapi.get_session")
    with pytest.raises(AssertionError, match="no option --urls"):
        check_span("sagaz worker --urls x")
    with pytest.raises(AssertionError, match="no command 'upgrades'"):
        check_span("flask sagaz db upgrades")
    with pytest.raises(AssertionError, match="not a sagaz setting"):
        check_span("SAGAZ_BROKER")
    with pytest.raises(AssertionError, match="no extra"):
        check_span("pip install 'sagaz[fastapis]'")
