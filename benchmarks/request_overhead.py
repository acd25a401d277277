"""What `start_saga` + `outbox.add` add to a web request, and what the wake-up costs
concurrent writers (PostgreSQL).

Default mode - one request at a time, interleaved rounds:
  A  one ORM row inserted and committed (the baseline "one-INSERT request");
  A+ the same request plus `start_saga` and `outbox.add`;
  B  five ORM rows inserted and committed;
  B+ the same plus `start_saga` and `outbox.add`.
Each round runs `--requests` requests of every kind, the kinds in a rotating order; the
figures are medians over the rounds: wall time per request, client CPU of the requesting
thread per request (`time.thread_time`), statements on the request's connection per
request (`before_cursor_execute`; commits are counted apart), the share of sagaz's
statements served from SQLAlchemy's compiled cache, and the ratios A+/A and B+/B. The
post-commit NOTIFY runs on another connection and thread (see sagaz.store.wakeup); its
statements and CPU are reported apart ("background").

`--clients N` mode - N writer processes run the A+ request as fast as they can for
`--seconds`, once per wake-up mode (``off``: no NOTIFY; ``transaction``: NOTIFY inside the
transaction; ``commit``: the coalesced post-commit NOTIFY, sagaz's default), in rotating
order for `--rounds` rounds; it prints commits/s (median) and the ratio to ``off``. Meanwhile
a probe process commits one A+ request every 10 ms into a schema of its own and this
process LISTENs: the commit-to-notification latency (p50/p99) is the cross-process
wake-up's, under that load.

Run:  .venv/bin/python benchmarks/request_overhead.py [--url postgresql://...]
          [--async] [--requests 300] [--rounds 7] [--wakeup commit|transaction|off]
      .venv/bin/python benchmarks/request_overhead.py --clients 16 [--seconds 3] [--rounds 3]
      .venv/bin/python benchmarks/request_overhead.py --clients 16 --pgbench  # pgbench_notify.py
It creates and drops its own schemas (sagaz_bench_req_<random>) in that database.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import CacheStats
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sagaz import Saga, action, outbox, start_saga
from sagaz.store.schema import metadata
from sagaz.store.wakeup import WAKEUP_KEY, notifier_for

MODES = ("off", "transaction", "commit")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "bench_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]
    note: Mapped[str]


class BenchSaga(Saga):
    saga_name = "bench-request"

    @action("noop")
    async def noop(self, ctx: Any) -> None:
        return None


def request(session: Session | AsyncSession, rows: int, with_sagaz: bool) -> None:
    """The body of one request (the commit is the caller's)."""
    orders = [Order(total=n, note="request") for n in range(rows)]
    session.add_all(orders)
    if with_sagaz:
        saga_id = start_saga(session, BenchSaga, {"order": 1, "items": ["a", "b"]})
        outbox.add(session, "orders.created", {"order": 1}, key="k", saga_id=saga_id)


KINDS: dict[str, tuple[int, bool]] = {
    "A": (1, False),
    "A+": (1, True),
    "B": (5, False),
    "B+": (5, True),
}


def engine_options(url: str, schema: str, *, asynchronous: bool) -> dict[str, Any]:
    if asynchronous:
        return {"connect_args": {"server_settings": {"search_path": schema}}}
    return {"connect_args": {"options": f"-csearch_path={schema}"}}


def sync_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def create_schema(url: str) -> str:
    schema = f"sagaz_bench_req_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(sync_url(url), **engine_options(url, schema, asynchronous=False))
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    metadata.create_all(engine)
    Base.metadata.create_all(engine)
    engine.dispose()
    return schema


def drop_schema(url: str, schema: str) -> None:
    engine = sa.create_engine(sync_url(url))
    with engine.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@contextmanager
def counting(engine: sa.Engine) -> Iterator[dict[str, int]]:
    """Statements per thread kind, commits, and sagaz statements served from the cache."""
    counts = {"request": 0, "background": 0, "commits": 0, "sagaz": 0, "sagaz_cached": 0}
    me = threading.get_ident()
    notifier = notifier_for(engine)
    sent = notifier.sent

    def on_execute(
        _conn: Any, _cursor: Any, statement: str, _p: Any, context: Any, _m: Any
    ) -> None:
        background = threading.get_ident() != me
        counts["background" if background else "request"] += 1
        if not background and "sagaz_" in statement:
            counts["sagaz"] += 1
            counts["sagaz_cached"] += int(context.cache_hit == CacheStats.CACHE_HIT)

    def on_commit(_conn: Any) -> None:
        counts["commits"] += 1

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    sa.event.listen(engine, "commit", on_commit)
    try:
        yield counts
    finally:
        counts["background"] += notifier.sent - sent  # raw cursor: no statement event
        sa.event.remove(engine, "before_cursor_execute", on_execute)
        sa.event.remove(engine, "commit", on_commit)


def run_single(args: argparse.Namespace, schema: str) -> None:
    info = {WAKEUP_KEY: args.wakeup}
    if args.use_async:
        url = make_url(args.url).set(drivername="postgresql+asyncpg")
        aengine = create_async_engine(url, **engine_options(args.url, schema, asynchronous=True))
        loop = asyncio.new_event_loop()
        engine = aengine.sync_engine

        def run(rows: int, with_sagaz: bool, n: int) -> None:
            async def go() -> None:
                for _ in range(n):
                    async with AsyncSession(aengine, info=info) as session:
                        request(session, rows, with_sagaz)
                        await session.commit()

            loop.run_until_complete(go())

        def close() -> None:
            loop.run_until_complete(aengine.dispose())
            loop.close()

    else:
        engine = sa.create_engine(
            sync_url(args.url), **engine_options(args.url, schema, asynchronous=False)
        )

        def run(rows: int, with_sagaz: bool, n: int) -> None:
            for _ in range(n):
                with Session(engine, info=info) as session:
                    request(session, rows, with_sagaz)
                    session.commit()

        close = engine.dispose  # type: ignore[assignment]
    for rows, with_sagaz in KINDS.values():
        run(rows, with_sagaz, 50)  # warm-up: pool, caches, prepared statements
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    order = list(KINDS)
    for round_number in range(args.rounds):
        for kind in order[round_number % len(order) :] + order[: round_number % len(order)]:
            rows, with_sagaz = KINDS[kind]
            with counting(engine) as counts:
                wall, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
                run(rows, with_sagaz, args.requests)
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                process = time.process_time() - process
            n = args.requests
            results[kind].append(
                {
                    "us": wall / n * 1e6,
                    "cpu": cpu / n * 1e6,
                    "background_cpu": max(process - cpu, 0.0) / n * 1e6,
                    "statements": counts["request"] / n,
                    "commits": counts["commits"] / n,
                    "background": counts["background"] / n,
                    "cached": counts["sagaz_cached"] / max(counts["sagaz"], 1),
                }
            )
    close()
    median = {
        k: {f: statistics.median(r[f] for r in rs) for f in rs[0]} for k, rs in results.items()
    }
    print(
        f"{'kind':5} {'us/request':>10} {'client CPU us':>13} {'statements':>10} {'commits':>7} "
        f"{'background stmts':>16} {'bg CPU us':>9} {'sagaz cached':>12}"
    )
    for kind, m in median.items():
        cached = f"{m['cached']:.0%}" if KINDS[kind][1] else "-"
        print(
            f"{kind:5} {m['us']:10.0f} {m['cpu']:13.0f} {m['statements']:10.2f} "
            f"{m['commits']:7.2f} {m['background']:16.2f} {m['background_cpu']:9.0f} {cached:>12}"
        )
    for plus, base, target in (("A+", "A", 1.5), ("B+", "B", 1.15)):
        ratio = median[plus]["us"] / median[base]["us"]
        added_cpu = median[plus]["cpu"] - median[base]["cpu"]
        added_rt = median[plus]["statements"] - median[base]["statements"]
        print(
            f"{plus}/{base}: latency {ratio:.2f}x (target <= {target}x: "
            f"{'met' if ratio <= target else 'NOT met'}); added client CPU {added_cpu:.0f} us "
            f"(target <= 200: {'met' if added_cpu <= 200 else 'NOT met'}); added round trips "
            f"{added_rt:.2f} (target <= 1: {'met' if added_rt <= 1.001 else 'NOT met'})"
        )


def writer(url: str, schema: str, mode: str, start: Any, stop_at: Any, out: Any) -> None:
    engine = sa.create_engine(sync_url(url), **engine_options(url, schema, asynchronous=False))
    info = {WAKEUP_KEY: mode}
    with Session(engine, info=info) as session:  # warm-up
        request(session, 1, True)
        session.commit()
    start.wait()
    done = 0
    while time.time() < stop_at.value:
        with Session(engine, info=info) as session:
            request(session, 1, True)
            session.commit()
        done += 1
    out.put(done)
    engine.dispose()


def probe(url: str, schema: str, mode: str, start: Any, stop_at: Any, out: Any) -> None:
    """One A+ request every 10 ms into `schema`; puts the commit times (perf_counter)."""
    engine = sa.create_engine(sync_url(url), **engine_options(url, schema, asynchronous=False))
    info = {WAKEUP_KEY: mode}
    start.wait()
    times = []
    while time.time() < stop_at.value - 0.2:
        with Session(engine, info=info) as session:
            request(session, 1, True)
            session.commit()
        times.append(time.perf_counter())
        time.sleep(0.01)
    time.sleep(0.3)
    out.put(times)
    engine.dispose()


def listen(url: str, schema: str, arrivals: list[float], stop: threading.Event) -> None:
    import psycopg

    with psycopg.connect(sync_url(url).replace("+psycopg", ""), autocommit=True) as connection:
        connection.execute("LISTEN sagaz_outbox")
        while not stop.is_set():
            for notification in connection.notifies(timeout=0.2):
                if notification.payload == schema:
                    arrivals.append(time.perf_counter())


def run_clients(args: argparse.Namespace, schema: str) -> None:
    probe_schema = create_schema(args.url)
    context = multiprocessing.get_context("fork")
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for round_number in range(args.rounds):
            order = MODES[round_number % 3 :] + MODES[: round_number % 3]
            for mode in order:
                start, out = context.Event(), context.Queue()
                stop_at = context.Value("d", 0.0)
                workers = [
                    context.Process(
                        target=writer, args=(args.url, schema, mode, start, stop_at, out)
                    )
                    for _ in range(args.clients)
                ]
                probing = context.Process(
                    target=probe, args=(args.url, probe_schema, mode, start, stop_at, out)
                )
                arrivals: list[float] = []
                stop = threading.Event()
                listener = threading.Thread(
                    target=listen, args=(args.url, probe_schema, arrivals, stop)
                )
                listener.start()
                for process in [*workers, probing]:
                    process.start()
                time.sleep(1.0)  # every writer connected and warmed up
                stop_at.value = time.time() + args.seconds
                start.set()
                collected = [out.get() for _ in range(args.clients + 1)]
                for process in [*workers, probing]:
                    process.join()
                stop.set()
                listener.join()
                commits = sum(c for c in collected if isinstance(c, int))
                results[mode].append(commits / args.seconds)
                (times,) = [c for c in collected if isinstance(c, list)]
                for at in times:
                    later = [a for a in arrivals if a >= at]
                    if later:
                        latencies[mode].append((min(later) - at) * 1000)
                print(
                    f"round {round_number + 1} {mode:12} {commits / args.seconds:8.0f} commits/s",
                    flush=True,
                )
    finally:
        drop_schema(args.url, probe_schema)
    off = statistics.median(results["off"])
    print(
        f"\n{args.clients} writer processes, {args.seconds}s x {args.rounds} rounds per mode "
        "(median):"
    )
    for mode in MODES:
        tps = statistics.median(results[mode])
        lat = sorted(latencies[mode])
        latency = "no NOTIFY"
        if lat:
            p99 = lat[max(int(len(lat) * 0.99) - 1, 0)]
            latency = f"commit->NOTIFY p50 {statistics.median(lat):.2f} ms p99 {p99:.2f} ms"
        print(f"{mode:12} {tps:8.0f} commits/s  {tps / off:5.2f}x of off   {latency}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "SAGAZ_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--async", dest="use_async", action="store_true", help="AsyncSession + asyncpg"
    )
    parser.add_argument("--requests", type=int, default=300, help="requests per kind per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--clients", type=int, help="concurrent writer processes (wake-up mode comparison)"
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--wakeup",
        choices=MODES,
        default="commit",
        help="single-request mode: the sessions' wake-up mode (default: sagaz's default)",
    )
    parser.add_argument(
        "--pgbench", action="store_true", help="with --clients: pgbench, no Python clients"
    )
    args = parser.parse_args()
    with sa.create_engine(sync_url(args.url)).connect() as connection:
        server = connection.scalar(sa.text("SHOW server_version"))
    print(
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} cores, PostgreSQL {server}, SQLAlchemy {sa.__version__}, "
        f"driver {'asyncpg (AsyncSession)' if args.use_async else 'psycopg (Session)'}"
    )
    schema = create_schema(args.url)
    try:
        if args.clients:
            print(
                f"mode: --clients {args.clients}, {args.seconds}s per run, {args.rounds} rounds",
                flush=True,
            )
            if args.pgbench:
                import pgbench_notify

                pgbench_notify.run(args.url, schema, args.clients, args.seconds, args.rounds)
            else:
                run_clients(args, schema)
        else:
            print(
                f"mode: single requests, {args.requests} per kind per round, {args.rounds} rounds, "
                f"wake-up {args.wakeup}",
                flush=True,
            )
            run_single(args, schema)
    finally:
        drop_schema(args.url, schema)


if __name__ == "__main__":
    main()
