"""The NOTIFY lock at the database alone: pgbench runs sagaz's request transaction with C
clients, without the Python clients' CPU in the way (used by
``request_overhead.py --clients N --pgbench``; needs the `pgbench` command).

Scripts, interleaved over the rounds:
  off          BEGIN; one order row; sagaz's one statement (a saga and an event); COMMIT
  transaction  the same with the NOTIFY inside the statement ("transaction" mode)
  commit       the "off" transaction, plus - as a second script picked as often as the
               first - a standalone ``SELECT pg_notify(...)`` in autocommit: the
               WORST case of the default "commit" mode, one NOTIFY per commit, i.e. no
               coalescing at all (the notifier sends at most one per 2 ms per process)
The figure is the write transactions' rate (the NOTIFY script's own transactions are
not counted), median over the rounds, and its ratio to "off".
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from sagaz.outbox.events import build_event_row
from sagaz.start import build_saga_row
from sagaz.store.schema import outbox, sagas
from sagaz.store.statements import (
    OUTBOX_CHANNEL,
    SAGA_CHANNEL,
    postgres_insert_groups,
    rows_document,
)

PLACEHOLDER = "00000000-0000-4000-8000-000000000000"


def write_transaction(notify: bool) -> str:
    saga = build_saga_row("bench-request", {"order": 1, "items": ["a", "b"]})
    event = build_event_row("orders.created", {"order": 1}, key="k")
    saga["id"] = event["id"] = PLACEHOLDER
    groups = ((sagas, tuple(saga), SAGA_CHANNEL), (outbox, tuple(event), OUTBOX_CHANNEL))
    sql = str(postgres_insert_groups(groups, notify=notify))
    for index, row in enumerate((saga, event)):
        literal = "'" + rows_document([row]).replace("'", "''") + "'"
        sql = sql.replace(
            f":rows{index}", f"replace({literal}, '{PLACEHOLDER}', gen_random_uuid()::text)"
        )
    sagaz = re.sub(r"\s+", " ", sql)
    return (
        "BEGIN;\nINSERT INTO bench_orders (total, note) VALUES (1, 'request');\n"
        f"{sagaz};\nCOMMIT;\n"
    )


def run(url: str, schema: str, clients: int, seconds: float, rounds: int) -> None:
    parsed = make_url(url)
    env = {
        **os.environ,
        "PGOPTIONS": f"-c search_path={schema}",
        "PGHOST": parsed.host or "127.0.0.1",
        "PGPORT": str(parsed.port or 5432),
        "PGUSER": parsed.username or "postgres",
        "PGDATABASE": parsed.database or "postgres",
    }
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    with tempfile.TemporaryDirectory() as directory:
        scripts = {
            "off": [Path(directory, "off.sql")],
            "transaction": [Path(directory, "transaction.sql")],
            "commit": [Path(directory, "off.sql"), Path(directory, "notify.sql")],
        }
        Path(directory, "off.sql").write_text(write_transaction(notify=False))
        Path(directory, "transaction.sql").write_text(write_transaction(notify=True))
        Path(directory, "notify.sql").write_text(
            f"SELECT pg_notify('{OUTBOX_CHANNEL}', current_schema());\n"
        )
        rates: dict[str, list[float]] = {mode: [] for mode in scripts}
        modes = list(scripts)
        for round_number in range(rounds):
            for mode in modes[round_number % 3 :] + modes[: round_number % 3]:
                command = ["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(int(seconds))]
                for script in scripts[mode]:
                    command += ["-f", str(script)]
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                rate = _write_rate(done.stdout, len(scripts[mode]), seconds)
                rates[mode].append(rate)
                print(
                    f"pgbench round {round_number + 1} {mode:12} {rate:8.0f} writes/s", flush=True
                )
    off = statistics.median(rates["off"])
    print(f"\npgbench, {clients} clients, {seconds:.0f}s x {rounds} rounds (median write tps):")
    for mode, values in rates.items():
        rate = statistics.median(values)
        print(f"{mode:12} {rate:8.0f} writes/s  {rate / off:5.2f}x of off")


def _write_rate(output: str, scripts: int, seconds: float) -> float:
    """The first script's transactions per second (the write transaction)."""
    if scripts == 1:
        match = re.search(r"number of transactions actually processed: (\d+)", output)
    else:
        match = re.search(r"SQL script 1: .*?\n.*?- (\d+) transactions", output, re.S)
    if match is None:
        raise RuntimeError(f"cannot read pgbench's output:\n{output}")
    return int(match.group(1)) / seconds
