"""Run one consumer as a process until SIGTERM/SIGINT:

    python -m sagaz.outbox.consumers --broker 'redis://127.0.0.1:6379/0?min_idle=10' \\
        --topic orders.created --group billing --handler myapp.consumers:charge \\
        --database postgresql+asyncpg://app@db/app

`--handler module:function` names `function(session, message)`. Consumer options go in
the broker URL's query string (see docs/brokers.md). Exit status: 0 after a signal,
2 for a configuration error (bad URL, option or handler).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Sequence

from sagaz.errors import ConfigurationError, MissingExtraError
from sagaz.outbox.consumers import Handler, consumer_from_url
from sagaz.store.engines import create_async_engine


def load_handler(spec: str) -> Handler:
    """`module:function` -> the function; ConfigurationError naming what is missing."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--handler must look like module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(
            f"--handler {spec!r}: cannot import {module_name}: {error}"
        ) from error
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise ConfigurationError(f"--handler {spec!r}: {module_name} has no function {attribute}")
    return handler  # type: ignore[no-any-return]


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(
        prog="python -m sagaz.outbox.consumers",
        description="Consume a topic and process each message exactly once (sagaz inbox).",
    )
    arguments.add_argument("--broker", required=True, help="broker URL, options as query")
    arguments.add_argument("--topic", required=True, help="stream / subject / routing key")
    arguments.add_argument("--group", required=True, help="consumer group = inbox consumer")
    arguments.add_argument("--handler", required=True, help="module:function(session, message)")
    arguments.add_argument("--database", required=True, help="SQLAlchemy database URL")
    arguments.add_argument("--name", help="this process's name in the group (default host-pid)")
    arguments.add_argument("--log-level", default="INFO", help="logging level (INFO)")
    return arguments


async def run(options: argparse.Namespace) -> None:
    handler = load_handler(options.handler)
    engine = create_async_engine(options.database)
    extra = {"name": options.name} if options.name else {}
    try:
        consumer = consumer_from_url(
            options.broker, options.topic, options.group, handler, engine, **extra
        )
        task = asyncio.ensure_future(consumer.run())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        logging.getLogger("sagaz.outbox.consumers").info(
            "consumer %s/%s stopped: %s", options.group, consumer.name, consumer.stats
        )
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    options = parser().parse_args(argv)
    logging.basicConfig(
        level=options.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(run(options))
    except (ConfigurationError, MissingExtraError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
