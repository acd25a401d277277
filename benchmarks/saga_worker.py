"""Durable saga throughput through one SagaWorker on PostgreSQL.

Starts N three-step sagas (async no-op steps) with start_saga in one transaction, then
runs one worker until all are COMPLETED. Every transition (saga started, 3 x step started
and completed, saga finished) is persisted and fenced by the worker's lease.

Run:  .venv/bin/python benchmarks/saga_worker.py [--url postgresql://postgres@127.0.0.1/postgres]
      [--sagas 3000] [--concurrency 200]
It creates and drops its own schema (sagaz_bench_<random>) in that database, and prints
sagas/s next to the worker process's CPU (share of one core, microseconds per saga): on a
shared 2-core machine the CPU per saga is the steadier figure.
Profile with SAGAZ_BENCH_PROFILE=1 (see `report_profile`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
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
    args = parser.parse_args()
    schema = f"sagaz_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sync_engine = create_engine(
        make_url(args.url).update_query_dict({"options": f"-csearch_path={schema}"})
    )
    metadata.create_all(sync_engine)
    if make_url(args.url).drivername == "postgresql+asyncpg":
        connect_args: dict[str, Any] = {"server_settings": {"search_path": schema}}
    else:
        connect_args = {"options": f"-csearch_path={schema}"}
    engine = create_async_engine(args.url, pool_size=20, connect_args=connect_args)
    try:
        async with AsyncSession(engine) as session:
            for n in range(args.sagas):
                start_saga(session, BenchSaga, {"n": n})
            await session.commit()
        worker = SagaWorker(engine, concurrency=args.concurrency, poll_interval=0.05)
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
        print(f"sagas={args.sagas} concurrency={args.concurrency} completed={done}")
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
