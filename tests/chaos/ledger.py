"""The chaos test's ledger: what happened, counted from the databases after the run, and
the seven promises of issue 11 checked against it - and that the chaos the issue asks for
was really done (a run that killed, paused or cut less than scheduled proves less).

Sources: the chaos database (sagas, their transactional effects, the outbox, what the
consumer processed), the effect ledger on the stable database (plain-step effects and
compensations, ordered by one sequence), the application's own record of what it
committed (the producer), and the chaos schedule (what was done to the processes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.store.schema import outbox, sagas
from tests.chaos.chaos_sagas import SAGA_NAME, consumed, inbox_skips, tx_effects
from tests.chaos.workload import Producer, doomed

#: Every event must be published within this many seconds of its commit, or of the end
#: of the chaos when it was committed during it.
PUBLISH_WITHIN = timedelta(seconds=10)
TERMINAL = {"completed", "compensated", "failed"}


@dataclass
class ChaosLog:
    """What the schedule did to the system."""

    worker_kills: int = 0
    kills_mid_batch: int = 0
    pauses: list[float] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    lease_seconds: float = 0.0
    postgres_restarts: int = 0
    broker_cuts: int = 0
    consumer_kills: int = 0
    started: datetime | None = None
    ended: datetime | None = None
    aiming_errors: list[str] = field(default_factory=list)
    #: The least of each disruption the schedule is to do (set by `run_chaos`): a run
    #: that did less proves less, and fails.
    scheduled: dict[str, int] = field(default_factory=dict)

    def done(self) -> dict[str, int]:
        """How many of each disruption were done, by the names of `scheduled`."""
        return {
            "worker SIGKILLs": self.worker_kills,
            "worker pauses longer than the lease": sum(p > self.lease_seconds for p in self.pauses),
            "PostgreSQL immediate restarts": self.postgres_restarts,
            "broker connection cuts": self.broker_cuts,
            "consumer SIGKILLs": self.consumer_kills,
        }

    def short_of_schedule(self) -> list[str]:
        """The disruptions done fewer times than scheduled."""
        done = self.done()
        return [
            f"{what}: {done[what]}, scheduled at least {least}"
            for what, least in self.scheduled.items()
            if done[what] < least
        ]


@dataclass
class Ledger:
    counts: dict[str, Any] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)
    #: promise -> the examples that break it (empty: kept)
    broken: dict[str, list[str]] = field(default_factory=dict)

    def promise(self, name: str, offenders: list[str]) -> None:
        self.broken[name] = offenders

    def render(self) -> str:
        width = max(len(key) for key in self.counts)
        lines = ["", "== chaos ledger"]
        lines += [f"  {key:<{width}}  {value}" for key, value in self.counts.items()]
        lines.append("== chaos timeline (s, what)")
        lines += [f"  {entry}" for entry in self.timeline]
        lines.append("== promises (issue 11)")
        for name, offenders in self.broken.items():
            verdict = "ok" if not offenders else f"BROKEN x{len(offenders)}: {offenders[:5]}"
            lines.append(f"  {name}: {verdict}")
        return "\n".join(lines)

    def failures(self) -> list[str]:
        return [f"{name} ({len(bad)}): {bad[:5]}" for name, bad in self.broken.items() if bad]


async def rows(engine: AsyncEngine, query: Any) -> list[Any]:
    async with engine.connect() as connection:
        return list(await connection.execute(query))


async def collect(
    chaos_db: AsyncEngine,
    effects_db: AsyncEngine,
    effects_schema: str,
    producer: Producer,
    chaos: ChaosLog,
    worker_log: str,
) -> Ledger:
    ledger = Ledger(timeline=chaos.timeline)
    await _sagas(ledger, chaos_db, effects_db, effects_schema, producer)
    await _events(ledger, chaos_db, producer, chaos)
    assert chaos.ended is not None
    ledger.counts.update(
        {
            "aiming look-ups that failed": f"{len(chaos.aiming_errors)} {chaos.aiming_errors[:3]}",
            "worker SIGKILLs": chaos.worker_kills,
            "... of a relay holding claimed events": chaos.kills_mid_batch,
            "worker pauses (s, lease)": f"{[round(p, 1) for p in chaos.pauses]}, "
            f"{chaos.lease_seconds}",
            "PostgreSQL immediate restarts": chaos.postgres_restarts,
            "broker connection cuts": chaos.broker_cuts,
            "consumer SIGKILLs": chaos.consumer_kills,
            "application commits retried": producer.failed_commits,
            "worker log ERROR lines": worker_log.count(" ERROR "),
            "worker log traceback lines": worker_log.count('  File "'),
        }
    )
    ledger.promise("the chaos ran as scheduled", chaos.short_of_schedule())
    return ledger


async def _sagas(
    ledger: Ledger,
    chaos_db: AsyncEngine,
    effects_db: AsyncEngine,
    schema: str,
    producer: Producer,
) -> None:
    found = {
        int(row.idempotency_key.split("-", 1)[1]): row
        for row in await rows(
            chaos_db,
            sa.select(sagas.c.idempotency_key, sagas.c.status, sagas.c.attempts, sagas.c.error)
            .where(sagas.c.name == SAGA_NAME),
        )
    }  # fmt: skip
    expected = producer.sagas
    statuses = Counter(row.status for row in found.values())
    lost = [f"order-{n}: no saga" for n in expected if n not in found]
    stuck = [f"order-{n}: {found[n].status}" for n in expected if n in found
             and found[n].status not in TERMINAL]  # fmt: skip
    # "Healthy": no saga here crashes its worker; a doomed one fails a step on purpose
    # and must be compensated, not given up on.
    wrong = [
        f"order-{n}: {row.status} ({(row.error or '')[:120]})"
        for n, row in found.items()
        if row.status in TERMINAL and row.status != ("compensated" if doomed(n) else "completed")
    ]
    effects = Counter(row.n for row in await rows(chaos_db, sa.select(tx_effects.c.n)))
    doubled = [f"order-{n}: {count} effects" for n, count in effects.items() if count > 1]
    plain = await rows(
        effects_db, sa.text(f'SELECT n, seq, at FROM "{schema}".chaos_plain_effects')
    )
    undone = await rows(
        effects_db,
        sa.text(f'SELECT n, min(seq) AS seq, min(at) AS at FROM "{schema}".chaos_compensations '
                "GROUP BY n"),
    )  # fmt: skip
    compensation = {row.n: row for row in undone}
    after_undo = [
        f"order-{row.n}: effect {(row.at - compensation[row.n].at).total_seconds():.2f} s "
        "after its compensation"
        for row in plain
        if row.n in compensation and row.seq > compensation[row.n].seq
    ]
    attempts = Counter(row.attempts for row in found.values())
    failed = Counter(doomed(n) for n, row in found.items() if row.status == "failed")
    ledger.counts.update(
        {
            "sagas committed by the application": len(expected),
            "sagas found": len(found),
            "saga statuses": dict(sorted(statuses.items())),
            "FAILED sagas (not doomed / doomed)": f"{failed[False]} / {failed[True]}",
            "sagas doomed on purpose": sum(doomed(n) for n in expected),
            "claims per saga (claims: sagas)": dict(sorted(attempts.items())),
            "transactional effects": sum(effects.values()),
            "sagas without their transactional effect": sum(
                1 for n in expected if n not in effects
            ),
            "plain-step effects written": len(plain),
            "sagas compensated in the effect ledger": len(compensation),
        }
    )
    ledger.promise("0 sagas lost or stuck", lost + stuck)
    ledger.promise("0 healthy sagas failed (default --max-attempts)", wrong)
    ledger.promise("0 transactional effects doubled", doubled)
    ledger.promise("0 plain-step effects written after their compensation", after_undo)


async def _events(
    ledger: Ledger, chaos_db: AsyncEngine, producer: Producer, chaos: ChaosLog
) -> None:
    assert chaos.ended is not None
    events = await rows(
        chaos_db,
        sa.select(outbox.c.id, outbox.c.topic, outbox.c.payload, outbox.c.status,
                  outbox.c.created_at, outbox.c.published_at, outbox.c.attempts,
                  outbox.c.last_error),
    )  # fmt: skip
    processed = Counter(
        row.message_id for row in await rows(chaos_db, sa.select(consumed.c.message_id))
    )
    redelivered = await rows(
        chaos_db, sa.select(sa.func.count()).select_from(consumed).where(consumed.c.deliveries > 1)
    )
    skipped = await rows(chaos_db, sa.select(sa.func.count()).select_from(inbox_skips))
    written = {row.payload["e"] for row in events if row.topic == producer.event_topic}
    lost = [f"event e={e}: not in the outbox" for e in producer.events if e not in written]
    lost += [f"event {row.id} ({row.topic}): not processed when the run ended"
             for row in events if row.id not in processed]  # fmt: skip
    twice = [f"event {key}: processed {count} times" for key, count in processed.items()
             if count > 1]  # fmt: skip
    late: list[str] = []
    delays: list[float] = []
    windows: dict[int, float] = {}
    published_per_window: Counter[int] = Counter()
    assert chaos.started is not None
    for row in events:
        if row.published_at is None:
            late.append(f"event {row.id}: never marked published ({row.status})")
            continue
        delay = (row.published_at - row.created_at).total_seconds()
        delays.append(delay)
        window = int((row.created_at - chaos.started).total_seconds() // 5 * 5)
        windows[window] = max(windows.get(window, 0.0), round(delay, 1))
        published_per_window[int((row.published_at - chaos.started).total_seconds() // 5 * 5)] += 1
        since = max(row.created_at, chaos.ended)
        if row.published_at - since > PUBLISH_WITHIN:
            after = "its commit" if row.created_at > chaos.ended else "the chaos ended"
            late.append(
                f"event {row.id}: published {(row.published_at - since).total_seconds():.1f} s "
                f"after {after}"
            )
    delays.sort()
    last_publish = max(
        ((row.published_at - chaos.ended).total_seconds() for row in events if row.published_at),
        default=0.0,
    )
    ledger.counts.update(
        {
            "events committed by the application": len(producer.events),
            "events in the outbox (application + sagas)": len(events),
            "events processed by the consumer": sum(processed.values()),
            "outbox attempts (attempts: events)": dict(
                sorted(Counter(row.attempts for row in events).items())
            ),
            "outbox errors seen": dict(
                Counter((row.last_error or "")[:60] for row in events if row.last_error)
            ),
            "events processed after a redelivery": redelivered[0][0],
            "repeats skipped by the inbox": skipped[0][0],
            "commit->published p50 / p99 / max (s)": " / ".join(
                f"{delays[int(q * (len(delays) - 1))]:.2f}" for q in (0.5, 0.99, 1.0)
            )
            if delays
            else "-",
            "max commit->published per 5 s of commit (s)": dict(sorted(windows.items())),
            "events published per 5 s": dict(sorted(published_per_window.items())),
            "last publish after the chaos ended (s)": round(last_publish, 1),
        }
    )
    ledger.promise("0 events lost", lost)
    ledger.promise("0 events processed twice", twice)
    ledger.promise("every event published within 10 s of its commit after the chaos", late)
