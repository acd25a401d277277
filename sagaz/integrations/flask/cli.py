"""``flask sagaz ...``: the `sagaz` command's own click commands, run with the app's
settings - its `SagaConfig` (step defaults, observability) and its database, broker,
lease and shutdown-grace settings as the options' defaults."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import Any

import click
from flask.cli import with_appcontext

from sagaz.cli.db import db as db_command
from sagaz.cli.dlq import dlq as dlq_command
from sagaz.cli.listing import list_sagas as list_command
from sagaz.cli.repair import cancel as cancel_command
from sagaz.cli.repair import retry as retry_command
from sagaz.cli.show import show as show_command
from sagaz.cli.stats import stats as stats_command
from sagaz.cli.worker import CONFIG_META_KEY
from sagaz.cli.worker import worker as worker_command
from sagaz.errors import ConfigurationError
from sagaz.integrations.flask.state import AppState, current_state

__all__ = ["sagaz_cli"]

_ENV_NOTE = re.compile(r"\s*\(env: [^)]*\)")

#: click option -> (the app.config key it defaults from, how to read it from the state).
_APP_DEFAULTS: dict[str, tuple[str, Callable[[AppState], Any]]] = {
    "database_url": ("SAGAZ_DATABASE_URL", lambda state: state.config.database_url),
    "broker_url": ("SAGAZ_BROKER_URL", lambda state: state.config.broker_url),
    "lease_seconds": ("SAGAZ_LEASE_SECONDS", lambda state: state.config.lease_seconds),
    "shutdown_grace": (
        "SAGAZ_SHUTDOWN_GRACE_SECONDS",
        lambda state: state.shutdown_grace_seconds,
    ),
}


def _from_app_config(name: str) -> Callable[[], Any]:
    key, read = _APP_DEFAULTS[name]

    def default() -> Any:
        value = read(current_state())
        if value is None:
            raise click.UsageError(
                f"the app has no {key} (nor a Flask-SQLAlchemy db to take "
                "it from): set it, or pass the option"
            )
        return value

    return default


def _with_app_defaults(command: click.Command) -> click.Command:
    """A copy of a `sagaz` command whose database, broker, lease and grace options
    default to the current app's settings instead of the environment."""
    mounted = copy.copy(command)
    mounted.params = [_app_param(param) for param in command.params]
    if isinstance(command, click.Group):
        assert isinstance(mounted, click.Group)
        mounted.commands = {name: _with_app_defaults(sub) for name, sub in command.commands.items()}
    return mounted


def _app_param(param: click.Parameter) -> click.Parameter:
    if param.name not in _APP_DEFAULTS or not isinstance(param, click.Option):
        return param
    option = copy.copy(param)
    option.envvar = None
    option.default = _from_app_config(param.name)
    option.show_default = f"the app's {_APP_DEFAULTS[param.name][0]}"
    option.help = _ENV_NOTE.sub("", option.help or "")
    return option


@click.group("sagaz")
@with_appcontext
@click.pass_context
def sagaz_cli(ctx: click.Context) -> None:
    """sagaz for this app: workers, sagas, migrations, dead letters.

    The worker runs with the app's SAGAZ_* config (step defaults, failure strategy,
    timeouts, metrics, tracing); database, broker, lease and shutdown-grace options
    default to it (the database to its Flask-SQLAlchemy bind); options override them.
    """
    try:
        ctx.meta[CONFIG_META_KEY] = current_state().config
    except ConfigurationError as error:  # no SagazExtension on the app
        raise click.UsageError(str(error)) from None


def _mount(commands: Iterable[click.Command]) -> None:
    for command in commands:
        sagaz_cli.add_command(_with_app_defaults(command))


_mount(
    [
        worker_command,
        list_command,
        show_command,
        retry_command,
        cancel_command,
        stats_command,
        db_command,
        dlq_command,
    ]
)
