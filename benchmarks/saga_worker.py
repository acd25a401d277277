"""Durable saga throughput through one SagaWorker on PostgreSQL.

Starts N three-step sagas (async no-op steps) with start_saga in one transaction, then
runs one worker until all are COMPLETED. Every transition (saga started, 3 x step started
and completed, saga finished) is persisted and fenced by the worker's lease.

Run:  .venv/bin/python benchmarks/saga_worker.py [--url postgresql://postgres@127.0.0.1/postgres]
      [--sagas 3000] [--concurrency 200] [--workers N]
With --workers N it measures, in the same run, one worker process and then N worker
processes (each a SagaWorker on its own engine) on fresh batches of sagas, and prints both
rates and their ratio; the clock runs from the moment every process is ready to the last
completion (the parent counts COMPLETED rows every 20 ms).
It creates and drops its own schema (sagaz_bench_<random>) in that database, and prints
sagas/s next to the worker process's CPU (share of one core, microseconds per saga): on a
shared 2-core machine the CPU per saga is the steadier figure.
Profile with SAGAZ_BENCH_PROFILE=1 (see `report_profile`). Each worker freezes its
start-up heap (`gc.freeze`) before it starts, as `sagaz worker` does; `--no-freeze`
measures without.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing
import os
import platform
import pstats
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from sagaz import Saga, action, start_saga
from sagaz._util import freeze_startup_heap
from sagaz.store.engines import create_async_engine, create_engine
from sagaz.store.schema import metadata, sagas
from sagaz.worker import SagaWorker


class BenchSaga(Saga):
    saga_name = "bench-three-step"

    @action("a")
    async def a(self, ctx: Any) -> None:
        return None

    @action("b", depends_on=["a"])
    async def b(self, ctx: Any) -> None:
        return None

    @action("c", depends_on=["b"])
    async def c(self, ctx: Any) -> None:
        return None


def report_profile(profiler: cProfile.Profile) -> None:
    """SAGAZ_BENCH_PROFILE=1: print the top 40 functions (SAGAZ_BENCH_SORT, default
    tottime), or save the whole profile to the file SAGAZ_BENCH_PROFILE_OUT names."""
    out = os.environ.get("SAGAZ_BENCH_PROFILE_OUT")
    if out:
        profiler.dump_stats(out)
        return
    pstats.Stats(profiler).sort_stats(os.environ.get("SAGAZ_BENCH_SORT", "tottime")).print_stats(40)


def _connect_args(url: str, schema: str) -> dict[str, Any]:
    if make_url(url).drivername == "postgresql+asyncpg":
        return {"server_settings": {"search_path": schema}}
    return {"options": f"-csearch_path={schema}"}


def _worker_process(url: str, schema: str, concurrency: int, freeze: bool, ready: Any, go: Any,
                    stop: Any, results: Any) -> None:  # fmt: skip
    """One worker process: ready, then run from `go` until `stop`; report (completed, CPU)."""

    async def run() -> None:
        engine = create_async_engine(url, pool_size=20, connect_args=_connect_args(url, schema))
        worker = SagaWorker(engine, concurrency=concurrency, poll_interval=0.05)
        if freeze:
            freeze_startup_heap()  # as `sagaz worker` does once started
        ready.set()
        await asyncio.to_thread(go.wait)
        cpu = time.process_time()
        task = asyncio.create_task(worker.run_until_stopped())
        await asyncio.to_thread(stop.wait)
        worker.stop()
        await task
        results.put((worker.completed, time.process_time() - cpu))
        await engine.dispose()

    asyncio.run(run())


async def measure_processes(
    args: argparse.Namespace, schema: str, sync_engine: sa.Engine, processes: int
) -> float:
    """Start `args.sagas` sagas, run them through `processes` worker processes; sagas/s."""
    engine = create_async_engine(args.url, connect_args=_connect_args(args.url, schema))
    async with AsyncSession(engine) as session:
        for n in range(args.sagas):
            start_saga(session, BenchSaga, {"n": n})
        await session.commit()
    await engine.dispose()
    with sync_engine.begin() as connection:
        before = connection.scalar(
            sa.select(sa.func.count()).select_from(sagas).where(sagas.c.status == "completed")
        )
    spawn = multiprocessing.get_context("spawn")
    go, stop, results = spawn.Event(), spawn.Event(), spawn.Queue()
    readies = [spawn.Event() for _ in range(processes)]
    workers = [
        spawn.Process(
            target=_worker_process,
            args=(args.url, schema, args.concurrency, args.freeze, ready, go, stop, results),
        )
        for ready in readies
    ]
    for process in workers:
        process.start()
    for ready in readies:
        await asyncio.to_thread(ready.wait)
    began = time.perf_counter()
    go.set()
    target = (before or 0) + args.sagas
    while True:
        with sync_engine.connect() as connection:
            done = connection.scalar(
                sa.select(sa.func.count()).select_from(sagas).where(sagas.c.status == "completed")
            )
        if (done or 0) >= target:
            break
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - began
    stop.set()
    reports = [await asyncio.to_thread(results.get) for _ in workers]
    for process in workers:
        process.join()
    cpu = sum(report[1] for report in reports)
    rate = args.sagas / elapsed
    print(
        f"{processes} worker process(es): {rate:,.0f} durable 3-step sagas/s "
        f"({elapsed:.2f} s), worker CPU {cpu / args.sagas * 1e6:,.0f} us per saga"
    )
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "SAGAZ_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--sagas", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--workers", type=int, default=0, help="also compare 1 and N processes")
    parser.add_argument(
        "--no-freeze",
        dest="freeze",
        action="store_false",
        help="leave the garbage collector as it is (sagaz worker freezes its start-up heap)",
    )
    args = parser.parse_args()
    schema = f"sagaz_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sync_engine = create_engine(
        make_url(args.url).update_query_dict({"options": f"-csearch_path={schema}"})
    )
    metadata.create_all(sync_engine)
    engine = create_async_engine(
        args.url, pool_size=20, connect_args=_connect_args(args.url, schema)
    )
    try:
        if args.workers:
            print(
                f"python {platform.python_version()}, {os.cpu_count()} cores, "
                f"sagas={args.sagas} per measure, concurrency={args.concurrency} per worker, "
                f"start-up heap frozen={args.freeze}"
            )
            one = await measure_processes(args, schema, sync_engine, 1)
            many = await measure_processes(args, schema, sync_engine, args.workers)
            print(f"{args.workers} processes / 1 process: {many / one:.2f}x")
            return
        async with AsyncSession(engine) as session:
            for n in range(args.sagas):
                start_saga(session, BenchSaga, {"n": n})
            await session.commit()
        worker = SagaWorker(engine, concurrency=args.concurrency, poll_interval=0.05)
        if args.freeze:
            freeze_startup_heap()  # as `sagaz worker` does once started
        profiler = cProfile.Profile() if os.environ.get("SAGAZ_BENCH_PROFILE") else None
        if profiler:
            profiler.enable()
        began, cpu_began = time.perf_counter(), time.process_time()
        task = asyncio.create_task(worker.run_until_stopped())
        while worker.completed < args.sagas:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu_began
        if profiler:
            profiler.disable()
            report_profile(profiler)
        worker.stop()
        await task
        with sync_engine.connect() as connection:
            done = connection.scalar(
                sa.select(sa.func.count()).select_from(sagas).where(sagas.c.status == "completed")
            )
        print(
            f"python {platform.python_version()}, {os.cpu_count()} cores, "
            f"{sync_engine.dialect.name} {sync_engine.dialect.server_version_info}"
        )
        print(
            f"sagas={args.sagas} concurrency={args.concurrency} completed={done} "
            f"start-up heap frozen={args.freeze}"
        )
        print(
            f"durable 3-step sagas/s through one worker: {args.sagas / elapsed:,.0f} "
            f"({elapsed:.2f} s; 6 transitions per saga persisted and fenced)"
        )
        print(
            f"worker process CPU: {cpu / elapsed:.0%} of one core, "
            f"{cpu / args.sagas * 1e6:,.0f} us per saga"
        )
    finally:
        await engine.dispose()
        sync_engine.dispose()
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())
