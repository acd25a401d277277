"""What `sagaz worker` shows an operator: its log output (text or JSON lines) and its
Prometheus metrics endpoint (`--metrics-port`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from sagaz.logging import JsonFormatter, SagaContextFilter

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def observe_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--log-format` and `--metrics-port` (with their variables)."""
    command = click.option(
        "--metrics-port",
        envvar="SAGAZ_METRICS_PORT",
        default=None,
        type=click.IntRange(min=0, max=65535),
        help="Serve the Prometheus metrics on this port (/metrics on every path); switches "
        "metrics on (env: SAGAZ_METRICS_PORT; needs the prometheus extra).",
    )(command)
    return click.option(
        "--log-format",
        envvar="SAGAZ_LOG_FORMAT",
        default="text",
        show_default=True,
        type=click.Choice(LOG_FORMATS, case_sensitive=False),
        help="text lines, or one JSON object per line with the saga and event fields "
        "(env: SAGAZ_LOG_FORMAT).",
    )(command)


def setup_logging(level: str, log_format: str) -> None:
    """Log to stderr at `level` in `log_format`; records get the saga context fields
    (`sagaz.logging.SagaContextFilter`)."""
    handler = logging.StreamHandler(sys.stderr)
    json_lines = log_format.lower() == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(SagaContextFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler])


@contextmanager
def metrics_server(port: int | None) -> Iterator[None]:
    """Serve the default registry's metrics on `port` while inside (nothing for None).
    A port that cannot be bound is a usage error naming `--metrics-port`."""
    if port is None:
        yield
        return
    from sagaz._util import requires_extra

    try:
        with requires_extra("prometheus", "prometheus_client", "--metrics-port"):
            import prometheus_client
    except ImportError as error:
        raise click.UsageError(str(error)) from None
    try:
        server, thread = prometheus_client.start_http_server(port)
    except OSError as error:
        raise click.UsageError(f"--metrics-port {port}: {error.strerror or error}") from None
    logging.getLogger("sagaz.cli").info("metrics served on port %d", server.server_port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
