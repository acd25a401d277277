"""The `sagaz` command. Each subcommand group lives in its own module and registers here.

Flask's CLI is click too: `sagaz.integrations.flask` mounts these same commands under
`flask sagaz`.
"""

from __future__ import annotations

import click

from sagaz.cli.db import db
from sagaz.cli.dlq import dlq
from sagaz.cli.listing import list_sagas
from sagaz.cli.repair import cancel, retry
from sagaz.cli.show import show
from sagaz.cli.stats import stats
from sagaz.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sagaz")
def main() -> None:
    """sagaz: sagas and a transactional outbox on your own database."""


main.add_command(db)
main.add_command(worker)
main.add_command(list_sagas)
main.add_command(dlq)
main.add_command(show)
main.add_command(retry)
main.add_command(cancel)
main.add_command(stats)

__all__ = ["main"]
