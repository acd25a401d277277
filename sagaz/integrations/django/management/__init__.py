"""Management commands that run the `sagaz` CLI's own click commands.

`ClickCommand` mirrors a click command's options as Django command arguments and, on
`handle`, calls that click command with the options given plus what the Django settings
decide: the database URL derived from ``DATABASES[--database]`` (default:
``settings.SAGAZ["DATABASE"]``) and the SAGAZ defaults. So ``manage.py sagaz_worker``
runs exactly the code of ``sagaz worker`` - same options, same validation, same graceful
shutdown - and only the configuration comes from Django.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import click
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.connection import ConnectionDoesNotExist

from sagaz.cli.worker import CONFIG_META_KEY
from sagaz.config import SagaConfig
from sagaz.errors import ConfigurationError
from sagaz.integrations.django.conf import database_url, get_settings

__all__ = ["ClickCommand", "ClickGroupCommand", "settings_config", "settings_defaults"]


class ClickCommand(BaseCommand):
    """A Django command running `click_command` (see the module docstring)."""

    click_command: ClassVar[click.Command]
    #: click options the Django command does not offer (they come from the settings).
    derived: ClassVar[frozenset[str]] = frozenset({"database_url"})

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default=None,
            help="The DATABASES alias of sagaz's tables "
            '(default: settings.SAGAZ["DATABASE"], else "default").',
        )
        for argument in self._arguments():  # positional, as on the command line
            parser.add_argument(
                argument.name or "argument",
                nargs="*" if argument.nargs == -1 else None,
                metavar=(argument.name or "argument").upper(),
            )
        for option in self._options():
            help_text = (option.help or "").replace("%", "%%")
            if option.show_default and not option.is_flag and option.default is not None:
                help_text += f" (default: {option.default})"
            kwargs: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS}
            names = [name for name in option.opts if name.startswith("--")]
            if option.is_flag and option.secondary_opts:
                kwargs["action"] = argparse.BooleanOptionalAction
                names = names[:1]
            elif option.is_flag:
                kwargs["action"] = "store_true"
            else:
                kwargs["action"] = "append" if option.multiple else "store"
                kwargs["metavar"] = option.name.upper() if option.name else None
                if isinstance(option.type, click.Choice):
                    kwargs["choices"] = list(option.type.choices)
            parser.add_argument(*names, help=help_text, **kwargs)

    def _arguments(self) -> Iterable[click.Argument]:
        for param in self.click_command.params:
            if isinstance(param, click.Argument):
                yield param

    def _options(self) -> Iterable[click.Option]:
        for param in self.click_command.params:
            if isinstance(param, click.Option) and param.name not in self.derived:
                yield param

    def defaults(self, options: dict[str, Any]) -> dict[str, Any]:
        """Click option values from the Django settings, used unless given on the
        command line (click option name -> value)."""
        return {"database_url": database_url(options.get("database"))}

    def saga_config(self, options: dict[str, Any]) -> SagaConfig | None:
        """The SagaConfig the click command starts from (`CONFIG_META_KEY`); None: the
        command's own (`SagaConfig.from_env()`)."""
        return None

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            values = self.defaults(options)
            config = self.saga_config(options)
        except (ImproperlyConfigured, ConnectionDoesNotExist) as error:
            raise CommandError(str(error)) from error
        values.update(
            {
                param.name: options[param.name]
                for param in (*self._arguments(), *self._options())
                if param.name in options
            }
        )
        with _as_command_errors():
            self._run(self._argv(values), config)

    def _run(self, argv: list[str], config: SagaConfig | None) -> None:
        """Run the click command with `argv`, starting from `config` when given."""
        command = self.click_command
        with command.make_context(f"manage.py {self._command_name()}", argv) as ctx:
            if config is not None:
                ctx.meta[CONFIG_META_KEY] = config
            command.invoke(ctx)

    def _argv(self, values: dict[str, Any]) -> list[str]:
        argv: list[str] = []
        for argument in self._arguments():
            value = values.get(argument.name or "")
            if value is not None:
                argv += [str(item) for item in value] if argument.nargs == -1 else [str(value)]
        if argv:
            argv.insert(0, "--")  # the arguments after the options: mark where they start
            arguments, argv = argv, []
        else:
            arguments = []
        for param in self.click_command.params:
            if not isinstance(param, click.Option) or param.name not in values:
                continue
            value = values[param.name]
            long_name = next(name for name in param.opts if name.startswith("--"))
            if param.is_flag and param.secondary_opts:
                argv.append(long_name if value else param.secondary_opts[0])
            elif param.is_flag:
                if value:
                    argv.append(long_name)
            elif param.multiple:
                for item in value:
                    argv += [long_name, str(item)]
            else:
                argv += [long_name, str(value)]
        if arguments:  # ["--", SAGA_ID]: after every option
            argv += arguments
        return argv

    def _command_name(self) -> str:
        return self.__module__.rsplit(".", 1)[-1]


class ClickGroupCommand(BaseCommand):
    """A Django command running a click group (``manage.py sagaz_dlq list --json``): the
    subcommand and its arguments as on the command line, plus ``--url`` derived from
    ``DATABASES[--database]`` (given before the subcommand)."""

    click_group: ClassVar[click.Group]

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default=None,
            help="The DATABASES alias of sagaz's tables "
            '(default: settings.SAGAZ["DATABASE"], else "default"); before the subcommand.',
        )
        parser.add_argument(
            "arguments",
            nargs=argparse.REMAINDER,
            metavar="SUBCOMMAND ...",
            help=f"one of {', '.join(sorted(self.click_group.commands))}, and its options",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        given = list(options.get("arguments") or [])
        if not given or given[0] not in self.click_group.commands:
            raise CommandError(f"give a subcommand: {', '.join(sorted(self.click_group.commands))}")
        try:
            url = database_url(options.get("database"))
        except (ImproperlyConfigured, ConnectionDoesNotExist) as error:
            raise CommandError(str(error)) from error
        name = f"manage.py {self.__module__.rsplit('.', 1)[-1]}"
        with _as_command_errors():
            argv = [given[0], "--url", url, *given[1:]]
            with self.click_group.make_context(name, argv) as ctx:
                self.click_group.invoke(ctx)


@contextlib.contextmanager
def _as_command_errors() -> Iterator[None]:
    """click's and sagaz's usage errors as Django's CommandError."""
    try:
        yield
    except click.ClickException as error:
        raise CommandError(error.format_message()) from error
    except click.Abort as error:
        raise CommandError("aborted") from error
    except ConfigurationError as error:  # e.g. an unknown broker URL scheme
        raise CommandError(str(error)) from error


def settings_defaults() -> dict[str, Any]:
    """Worker option defaults from ``settings.SAGAZ`` (the rest of its settings reach
    the worker as its SagaConfig, `settings_config`)."""
    return {"shutdown_grace": get_settings().shutdown_grace_seconds}


def settings_config(options: dict[str, Any]) -> SagaConfig:
    """The worker's SagaConfig: ``settings.SAGAZ`` on ``DATABASES[--database]``."""
    defaults: dict[str, Any] = {}
    broker_url = os.environ.get("SAGAZ_BROKER_URL")
    if broker_url:  # BROKER_URL unset: `sagaz worker`'s default, the variable
        defaults["broker_url"] = broker_url
    return get_settings().saga_config(
        database_url=database_url(options.get("database")), **defaults
    )
