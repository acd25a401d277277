"""Outbox relay on PostgreSQL: events per second, commit-to-publish latency, idle cost.

1. Throughput: N events are written with `outbox.add` (not timed), then one OutboxRelay
   publishes them; the figure is N / (time from the relay's start to the last
   confirmation), best and median of `--repeat` runs, per broker URL (`memory://`,
   Redis Streams, NATS JetStream).
2. Latency, same process: an async producer on the relay's event loop commits one event
   at a time through an AsyncSession; the relay is woken by the post-commit signal. The
   figure is the time from `commit()` returning to the broker's `publish_batch` seeing
   the event.
3. Latency, across processes: a producer subprocess commits one event at a time (sync
   Session, psycopg); only PostgreSQL LISTEN/NOTIFY wakes the relay.
4. Idle cost: CPU time of this process while a relay (poll_interval 1 s, LISTEN on)
   waits with nothing to do, as a percentage of one core.

The relays poll every 30 s in 2 and 3, so the latencies are the wake-ups' own.

5. Backlog drain (`--backlog N [--no-analyze]`, instead of 1-4): N pending events are
   written with one INSERT ... SELECT (keys as `--keys`), the table is left unanalysed
   with `--no-analyze` (autovacuum may be off too: a burst into a new table), and one
   relay drains it to the in-memory broker. It prints the claim statement's time per
   batch at the start, middle and end of the drain, events/s, and this process's RSS
   after 100,000 events and at the end.

Run:  .venv/bin/python benchmarks/outbox_relay.py
        [--url postgresql://postgres@127.0.0.1:5432/postgres] [--events 10000] [--repeat 3]
        [--batch-size 1000] [--concurrency 2] [--keys 1000] [--latency-samples 500]
        [--brokers memory://,redis://127.0.0.1:6379,nats://127.0.0.1:4222?...] [--explain]
        [--backlog 1000000 [--no-analyze]]
It creates and drops its own schema (sagaz_bench_relay_<random>) in that database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from sagaz import outbox
from sagaz.outbox.brokers.base import Broker, OutboxMessage
from sagaz.outbox.relay import OutboxRelay
from sagaz.store.schema import metadata

DEFAULT_BROKERS = (
    "memory://,redis://127.0.0.1:6379,"
    "nats://127.0.0.1:4222?stream=SAGAZ_BENCH&subjects=sagazbench.>"
)
TOPIC = "sagazbench.events"


class Timed:
    """Wraps a broker: counts confirmations and notes when each event id was published."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.confirmed = 0
        self.target = 0
        self.seen_at: dict[str, float] = {}
        self.done = asyncio.Event()
        self.arrived = asyncio.Event()

    async def connect(self) -> None:
        await self.broker.connect()

    async def publish_batch(
        self, messages: Sequence[OutboxMessage]
    ) -> Sequence[BaseException | None]:
        at = time.perf_counter()
        for message in messages:
            self.seen_at.setdefault(message.id, at)
        self.arrived.set()
        results = await self.broker.publish_batch(messages)
        self.confirmed += sum(1 for result in results if result is None)
        if self.target and self.confirmed >= self.target:
            self.done.set()
        return results

    async def close(self) -> None:
        await self.broker.close()


def make_broker(url: str) -> Broker:
    from sagaz.outbox.brokers import broker_from_url

    return broker_from_url(url)


def engines(url: str, schema: str, driver: str) -> tuple[sa.Engine, AsyncEngine]:
    base = make_url(url)
    sync_engine = sa.create_engine(
        base.set(drivername="postgresql+psycopg"),
        connect_args={"options": f"-csearch_path={schema}"},
    )
    if driver == "asyncpg":
        async_engine = create_async_engine(
            base.set(drivername="postgresql+asyncpg"),
            connect_args={"server_settings": {"search_path": schema}},
        )
    else:
        async_engine = create_async_engine(
            base.set(drivername="postgresql+psycopg"),
            connect_args={"options": f"-csearch_path={schema}"},
        )
    return sync_engine, async_engine


def seed(sync_engine: sa.Engine, count: int, keys: int) -> None:
    with sync_engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE sagaz_outbox"))
    done = 0
    while done < count:
        with Session(sync_engine) as session:
            for n in range(done, min(count, done + 1000)):
                key = f"k{n % keys}" if keys else None
                outbox.add(session, TOPIC, {"n": n, "pad": "x" * 64}, key=key)
            session.commit()
        done = min(count, done + 1000)
    with sync_engine.begin() as connection:
        connection.execute(sa.text("ANALYZE sagaz_outbox"))


def relay_for(engine: AsyncEngine, broker: Broker, **options: Any) -> OutboxRelay:
    return OutboxRelay(engine, broker, published_retention=None, inbox_retention=None, **options)


async def throughput(
    sync_engine: sa.Engine, engine: AsyncEngine, url: str, args: argparse.Namespace
) -> str:
    name = url.split("?")[0]
    rates = []
    for _ in range(args.repeat):
        try:
            broker = Timed(make_broker(url))
            await broker.connect()
        except Exception as error:
            return f"{name:<28} skipped: {type(error).__name__}: {error}"
        seed(sync_engine, args.events, args.keys)
        broker.target = args.events
        relay = relay_for(
            engine,
            broker,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            poll_interval=1.0,
        )
        began = time.perf_counter()
        task = asyncio.create_task(relay.run_until_stopped())
        await asyncio.wait_for(broker.done.wait(), 600)
        elapsed = time.perf_counter() - began
        relay.stop()
        await task
        await broker.close()
        rates.append(args.events / elapsed)
    runs = " ".join(f"{rate:.0f}" for rate in rates)
    return (
        f"{name:<28} best {max(rates):7.0f}  median {statistics.median(rates):7.0f} events/s"
        f"   (runs: {runs})"
    )


def percentiles(samples: list[float]) -> str:
    ms = sorted(sample * 1000 for sample in samples)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   max {ms[-1]:6.2f} ms   (n={len(ms)})"


async def latency_in_process(sync_engine: sa.Engine, engine: AsyncEngine, samples: int) -> str:
    from sagaz.outbox.brokers.memory import InMemoryBroker

    seed(sync_engine, 0, 0)
    broker = Timed(InMemoryBroker())
    relay = relay_for(engine, broker, poll_interval=30.0, listen=False)
    task = asyncio.create_task(relay.run_until_stopped())
    await relay.idle.wait()
    latencies = []
    for n in range(samples):
        async with AsyncSession(engine) as session:
            event_id = outbox.add(session, TOPIC, {"n": n})
            await session.commit()
        committed = time.perf_counter()
        while event_id not in broker.seen_at:
            broker.arrived.clear()
            await broker.arrived.wait()
        latencies.append(broker.seen_at[event_id] - committed)
        await relay.idle.wait()  # the event is marked; the relay waits again
    relay.stop()
    await task
    return percentiles(latencies)


async def latency_cross_process(
    sync_engine: sa.Engine, engine: AsyncEngine, args: argparse.Namespace, schema: str
) -> str:
    from sagaz.outbox.brokers.memory import InMemoryBroker

    seed(sync_engine, 0, 0)
    broker = Timed(InMemoryBroker())
    relay = relay_for(engine, broker, poll_interval=30.0, listen=True)
    task = asyncio.create_task(relay.run_until_stopped())
    await asyncio.sleep(0)  # the relay creates its listener as it starts
    assert relay.listener is not None
    await relay.listener.listening.wait()
    await relay.idle.wait()
    producer = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--produce",
        str(args.latency_samples),
        "--url",
        args.url,
        "--schema",
        schema,
        stdout=subprocess.PIPE,
    )
    output, _ = await producer.communicate()
    committed = {}
    for line in output.decode().splitlines():
        event_id, at = line.split()
        committed[event_id] = float(at)
    while not set(committed) <= set(broker.seen_at):
        broker.arrived.clear()
        await broker.arrived.wait()
    relay.stop()
    await task
    return percentiles([broker.seen_at[event_id] - at for event_id, at in committed.items()])


def produce(url: str, schema: str, count: int) -> None:
    """The subprocess of the cross-process latency run: one event per commit."""
    sync_engine = sa.create_engine(
        make_url(url).set(drivername="postgresql+psycopg"),
        connect_args={"options": f"-csearch_path={schema}"},
    )
    with Session(sync_engine) as session:
        for n in range(count):
            event_id = outbox.add(session, TOPIC, {"n": n})
            session.commit()
            print(event_id, time.perf_counter(), flush=True)
            time.sleep(0.005)
    sync_engine.dispose()


def explain(sync_engine: sa.Engine) -> None:
    """EXPLAIN ANALYZE of a 500-event claim over 100k published + 10k pending events."""
    import random
    from datetime import UTC, datetime

    from sagaz.outbox.claims import explain_claim
    from sagaz.store.schema import outbox as outbox_table

    now = datetime.now(UTC)
    rng = random.Random(1)

    def rows(count: int, status: str) -> list[dict[str, Any]]:
        return [
            {
                "id": str(uuid.uuid4()),
                "topic": TOPIC,
                "key": f"k{rng.randrange(2000)}" if n % 2 else None,
                "payload": {"n": n},
                "headers": {},
                "status": status,
                "attempts": 0,
                "next_attempt_at": now - timedelta(seconds=1),
                "created_at": now,
                "published_at": now if status == "published" else None,
            }
            for n in range(count)
        ]

    with sync_engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE sagaz_outbox"))
        connection.execute(sa.insert(outbox_table), rows(100_000, "published"))
        connection.execute(sa.insert(outbox_table), rows(10_000, "pending"))
        connection.execute(sa.text("ANALYZE sagaz_outbox"))
    with sync_engine.connect() as connection, connection.begin() as transaction:
        plan = explain_claim(
            connection, now=now, limit=500, window=1000, options="ANALYZE, COSTS OFF"
        )
        transaction.rollback()
    print("\n".join(plan))
    sequential = [line for line in plan if "Seq Scan on sagaz_outbox" in line]
    print("\nsequential scans of sagaz_outbox:", len(sequential))


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def seed_backlog(sync_engine: sa.Engine, count: int, keys: int, analyze: bool) -> None:
    """`count` pending events in chunks of one INSERT ... SELECT each (not timed)."""
    key = f"'k' || (g % {keys})" if keys else "NULL"
    with sync_engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE sagaz_outbox"))
    for start in range(0, count, 100_000):
        with sync_engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO sagaz_outbox (id, topic, key, payload, headers, status, "
                    "attempts, next_attempt_at, created_at) "
                    f"SELECT gen_random_uuid(), :topic, {key}, "
                    "json_build_object('n', g, 'pad', repeat('x', 64)), "
                    "json_build_object('correlation-id', md5(g::text)), 'pending', 0, "
                    "clock_timestamp(), clock_timestamp() "
                    "FROM generate_series(:start, :stop) g"
                ),
                {"topic": TOPIC, "start": start, "stop": min(count, start + 100_000) - 1},
            )
    if analyze:
        with sync_engine.begin() as connection:
            connection.execute(sa.text("ANALYZE sagaz_outbox"))


async def backlog_drain(
    sync_engine: sa.Engine, engine: AsyncEngine, args: argparse.Namespace
) -> None:
    from sagaz.outbox import claims
    from sagaz.outbox.brokers.memory import InMemoryBroker

    began = time.perf_counter()
    seed_backlog(sync_engine, args.backlog, args.keys, analyze=not args.no_analyze)
    with sync_engine.connect() as connection:
        reltuples = connection.scalar(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = 'sagaz_outbox'::regclass")
        )
    print(
        f"seeded {args.backlog} pending events in {time.perf_counter() - began:.1f} s; "
        f"pg_class.reltuples={reltuples:.0f} ({'never analysed' if reltuples < 0 else 'analysed'})",
        flush=True,
    )

    class Counting(InMemoryBroker):
        """Keeps a count, not the messages: the broker's memory is not the relay's."""

        def __init__(self) -> None:
            super().__init__()
            self.count = 0
            self.done = asyncio.Event()

        async def publish_batch(
            self, messages: Sequence[OutboxMessage]
        ) -> Sequence[BaseException | None]:
            self.count += len(messages)
            if self.count >= args.backlog:
                self.done.set()
            return [None] * len(messages)

    broker = Counting()
    timings: list[tuple[int, float]] = []
    original = claims.claim_batch

    def timed_claim(*positional: Any, **keywords: Any) -> Any:
        start = time.perf_counter()
        events = original(*positional, **keywords)
        timings.append((broker.count, (time.perf_counter() - start) * 1000))
        return events

    claims.claim_batch = timed_claim  # type: ignore[assignment]
    rss_start = rss_mb()
    rss_100k: float | None = None
    relay = relay_for(
        engine, broker, batch_size=args.batch_size, concurrency=args.concurrency, listen=False
    )
    began = time.perf_counter()
    task = asyncio.create_task(relay.run_until_stopped())
    progress = time.perf_counter()
    while not broker.done.is_set():
        await asyncio.sleep(0.2)
        if rss_100k is None and broker.count >= min(100_000, args.backlog):
            rss_100k = rss_mb()
        if time.perf_counter() - progress > 10:
            progress = time.perf_counter()
            rate = broker.count / (progress - began)
            print(f"  ... {broker.count} published, {rate:.0f} events/s", flush=True)
    elapsed = time.perf_counter() - began
    relay.stop()
    await task
    claims.claim_batch = original  # type: ignore[assignment]
    rss_end = rss_mb()
    full = [(at, ms) for at, ms in timings]

    def phase(name: str, low: float, high: float) -> None:
        picked = [ms for at, ms in full if low * args.backlog <= at < high * args.backlog]
        if picked:
            print(
                f"claim ms per batch, {name:<6} median {statistics.median(picked):6.1f}  "
                f"max {max(picked):6.1f}  (n={len(picked)})"
            )

    print(
        f"drained {broker.count} events in {elapsed:.1f} s: {broker.count / elapsed:.0f} events/s"
    )
    phase("start", 0.0, 0.05)
    phase("middle", 0.475, 0.525)
    phase("end", 0.95, 1.01)
    growth = (
        ""
        if rss_100k is None
        else f"  growth from 100k to end: {100 * (rss_end / rss_100k - 1):+.1f}%"
    )
    print(
        f"RSS MB: before {rss_start:.0f}, after 100k events {rss_100k or 0:.0f}, "
        f"at the end {rss_end:.0f}{growth}"
    )


async def idle_cost(engine: AsyncEngine, seconds: float) -> str:
    import gc

    from sagaz.outbox.brokers.memory import InMemoryBroker

    gc.collect()  # not the earlier runs' garbage
    relay = relay_for(engine, InMemoryBroker(), poll_interval=1.0, listen=True)
    task = asyncio.create_task(relay.run_until_stopped())
    await asyncio.sleep(1.0)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    relay.stop()
    await task
    return f"{100 * cpu / wall:.2f}% of one core over {wall:.0f} s (poll_interval 1 s, LISTEN on)"


async def main(args: argparse.Namespace) -> None:
    schema = f"sagaz_bench_relay_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(make_url(args.url).set(drivername="postgresql+psycopg"))
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        server = connection.scalar(sa.text("SHOW server_version"))
    sync_engine, engine = engines(args.url, schema, args.driver)
    metadata.create_all(sync_engine)
    print(
        f"# benchmarks/outbox_relay.py  Python {platform.python_version()}  "
        f"{platform.system()} {platform.machine()}  {os.cpu_count()} cores  "
        f"PostgreSQL {server}  driver {args.driver}"
    )
    print(
        f"# events={args.events} x{args.repeat} batch_size={args.batch_size} "
        f"concurrency={args.concurrency} "
        f"keys={args.keys or 'none'} "
        f"latency_samples={args.latency_samples}"
    )
    try:
        if args.backlog:
            print(
                f"\n## backlog drain: {args.backlog} events, "
                f"{'never analysed' if args.no_analyze else 'analysed'}, memory broker"
            )
            await backlog_drain(sync_engine, engine, args)
            return
        if args.explain:
            print("\n## EXPLAIN ANALYZE of a claim (100k published + 10k pending events)")
            explain(sync_engine)
            return
        print("\n## throughput: events / (relay start to last confirmation)")
        for url in args.brokers.split(","):
            print(await throughput(sync_engine, engine, url, args), flush=True)
        print("\n## commit-to-publish latency")
        in_process = await latency_in_process(sync_engine, engine, args.latency_samples)
        print(f"same process (signal)      {in_process}", flush=True)
        cross = await latency_cross_process(sync_engine, engine, args, schema)
        print(f"other process (NOTIFY)     {cross}", flush=True)
        print("\n## idle relay")
        print(await idle_cost(engine, args.idle_seconds))
    finally:
        await engine.dispose()
        sync_engine.dispose()
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "SAGAZ_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--driver", choices=["asyncpg", "psycopg"], default="asyncpg")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2, help="relay passes in flight at once")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys (0: no keys)")
    parser.add_argument("--brokers", default=DEFAULT_BROKERS)
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per broker")
    parser.add_argument("--latency-samples", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument(
        "--explain", action="store_true", help="print the claim's plan on a large table, only"
    )
    parser.add_argument(
        "--backlog", type=int, default=0, help="drain this many pending events, only"
    )
    parser.add_argument(
        "--no-analyze", action="store_true", help="with --backlog: leave the table unanalysed"
    )
    parser.add_argument("--produce", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.produce is not None:
        produce(arguments.url, arguments.schema, arguments.produce)
    else:
        asyncio.run(main(arguments))
