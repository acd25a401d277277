"""docs/settings.md's table stays true: every name in a row exists, or is accepted, in
the adapter of its column - Flask keys by the Flask extension's settings reader, Django
keys by `settings.SAGAZ`'s, FastAPI names as SagaConfig fields, the variables SagaConfig
reads, or parameters of the API shown."""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest

from sagaz import ConfigurationError, SagaConfig
from tests.docs.markdown_blocks import ROOT
from tests.docs.test_frameworks_table import check_span as check_command_or_name

PAGE = ROOT / "docs" / "settings.md"
COLUMNS = ("FastAPI", "Flask", "Django")
_SPAN = re.compile(r"`([^`]+)`")
_CALL = re.compile(r"(\w+)\((.*)\)")
_ACCEPTED = object()  # a value no setting takes: only "unknown key" tells a key apart


def table_rows() -> list[list[str]]:
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in PAGE.read_text(encoding="utf-8").splitlines()
        if line.startswith("|")
    ]
    assert rows[0][:4] == ["Setting", *COLUMNS], "the table's header changed"
    return rows[2:]


def accepted(read: Callable[[], object]) -> None:
    """`read` does not refuse its key as unknown (a bad value is fine here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            read()
        except ConfigurationError as error:
            refusal = str(error)
        else:
            refusal = ""
    assert "unknown sagaz setting" not in refusal, refusal


def flask_key(key: str) -> None:
    from sagaz.integrations.flask.settings import SETTING_KEYS, read_flask_settings

    accepted(lambda: read_flask_settings({key: _ACCEPTED}, {}))
    assert key in SETTING_KEYS


def django_key(key: str) -> None:
    from sagaz.integrations.django.conf import load_settings

    accepted(lambda: load_settings({key: _ACCEPTED}))


def fastapi_name(name: str) -> None:
    if name.startswith("SAGAZ_"):
        accepted(lambda: SagaConfig.from_mapping({name: _ACCEPTED}))
        field = name.removeprefix("SAGAZ_").lower()
        assert field in {spec.name for spec in fields(SagaConfig)}, name
        return
    field = name.removeprefix("SagaConfig.")
    assert field in {spec.name for spec in fields(SagaConfig) if spec.init}, name


API_HOMES = (
    "sagaz.integrations.fastapi",
    "sagaz.integrations.asgi",
    "sagaz.integrations.flask",
    "sagaz.integrations.django.views",
)


def api_call(text: str) -> bool:
    """`function(a=..., b=...)`: the function exists and takes those keywords."""
    import importlib

    match = _CALL.fullmatch(text)
    if match is None:
        return False
    function: Any = None
    for home in API_HOMES:
        function = getattr(importlib.import_module(home), match[1], None)
        if function is not None:
            break
    assert function is not None, f"{match[1]} is in none of {API_HOMES}"
    parameters = inspect.signature(function).parameters
    for keyword in re.findall(r"(\w+)=", match[2]):
        assert keyword in parameters, f"{text}: no parameter {keyword}"
    return True


def check_span(column: str, span: str) -> str | None:
    text = span.strip()
    if api_call(text):
        return "api"
    if column == "Flask" and re.fullmatch(r"SAGAZ_[A-Z_]+", text):
        flask_key(text)
        return "setting"
    if column == "Django" and (match := re.fullmatch(r'SAGAZ\["([A-Z_]+)"\]', text)):
        django_key(match[1])
        return "setting"
    if column == "FastAPI" and re.fullmatch(r"SAGAZ_[A-Z_]+|SagaConfig\.\w+", text):
        fastapi_name(text)
        return "setting"
    return "name" if check_command_or_name(text) else None


ROWS = table_rows()


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_every_name_exists_in_every_adapter(row: list[str]) -> None:
    for column, cell in zip(COLUMNS, row[1:4], strict=True):
        checked = []
        for span in _SPAN.findall(cell):
            try:
                kind = check_span(column, span)
            except (ImportError, AttributeError, AssertionError) as error:
                pytest.fail(f"{row[0]} / {column}: `{span}`: {error!r}")
            if kind:
                checked.append(kind)
        assert checked, f"{row[0]} / {column}: nothing the test can check"


def test_every_setting_of_every_adapter_has_a_row() -> None:
    from sagaz.integrations.django.conf import SETTING_KEYS as DJANGO_KEYS
    from sagaz.integrations.flask.settings import SETTING_KEYS as FLASK_KEYS

    text = PAGE.read_text(encoding="utf-8")
    config_fields = {spec.name for spec in fields(SagaConfig) if spec.init} - {"extra_listeners"}
    for name in config_fields:
        assert f"`SagaConfig.{name}`" in text, name
    for key in FLASK_KEYS:
        assert f"`{key}`" in text, key
    for key in DJANGO_KEYS:
        assert f'`SAGAZ["{key}"]`' in text, key


def test_a_wrong_name_is_caught() -> None:
    with pytest.raises(AssertionError, match="unknown sagaz setting"):
        check_span("Flask", "SAGAZ_MAX_RETRYS")
    with pytest.raises(AssertionError, match="unknown sagaz setting"):
        check_span("Django", 'SAGAZ["CORRELATION_HEADERS"]')
    with pytest.raises(AssertionError):
        check_span("FastAPI", "SagaConfig.retries")
    with pytest.raises(AssertionError, match="no parameter prefix"):
        check_span("FastAPI", "create_health_router(prefix=...)")
