"""In-memory overhead of the saga engine, per saga and per step.

Runs N sagas of 1 and of 10 no-op async steps (a chain, and 10 independent steps) through
`Saga.run` with the in-memory journal, and the same coroutines awaited directly in a
loop, then prints microseconds per saga, per step, and the ratio between the two. What
it measures is the engine's own cost: scheduling, retries/timeouts bookkeeping, JSON
checks, transitions written to a MemoryJournal, the SagaResult. No database.

    .venv/bin/python benchmarks/engine_overhead.py              # N=2000
    .venv/bin/python benchmarks/engine_overhead.py -n 10000 --repeat 5

This is a benchmark, not a test: numbers depend on the machine and nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from sagaz import Saga, SagaStatus


async def noop(ctx: Mapping[str, Any]) -> None:
    return None


def chain(steps: int) -> Saga:
    saga = Saga(name=f"bench-chain-{steps}")
    for index in range(steps):
        saga.add_step(f"s{index}", noop)
    return saga


def parallel(steps: int) -> Saga:
    saga = Saga(name=f"bench-parallel-{steps}")
    for index in range(steps):
        saga.add_step(f"s{index}", noop, depends_on=[])
    return saga


async def best_of(repeat: int, body: Callable[[], Awaitable[None]]) -> float:
    """The fastest of `repeat` timed runs of `body`, in seconds."""
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        await body()
        timings.append(time.perf_counter() - started)
    return min(timings)


async def measure(saga: Saga, steps: int, n: int, repeat: int) -> tuple[float, float]:
    """(seconds for n sagas through the engine, seconds for n direct step loops)."""
    context = {"order_id": 1}

    async def through_engine() -> None:
        for _ in range(n):
            result = await saga.run(context)
            if result.status is not SagaStatus.COMPLETED:
                raise RuntimeError(f"benchmark saga did not complete: {result.errors}")

    async def direct() -> None:
        for _ in range(n):
            for _ in range(steps):
                await noop(context)

    await through_engine()  # warm up (imports, caches)
    return await best_of(repeat, through_engine), await best_of(repeat, direct)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="sagas per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    args = parser.parse_args()

    print("sagaz engine overhead (in memory, MemoryJournal, no-op async steps)")
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"N={args.n} sagas per measurement, best of {args.repeat}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print()
    header = (
        f"{'saga shape':<22}{'us/saga':>10}{'us/step':>10}"
        f"{'direct us/saga':>16}{'ratio':>8}{'sagas/s':>10}"
    )
    print(header)
    print("-" * len(header))
    per_saga: dict[str, float] = {}
    for label, saga, steps in (
        ("1 step", chain(1), 1),
        ("10 steps, chain", chain(10), 10),
        ("10 steps, parallel", parallel(10), 10),
    ):
        engine_s, direct_s = await measure(saga, steps, args.n, args.repeat)
        us_saga = engine_s / args.n * 1e6
        direct_us = direct_s / args.n * 1e6
        per_saga[label] = us_saga
        print(
            f"{label:<22}{us_saga:>10.1f}{us_saga / steps:>10.1f}{direct_us:>16.2f}"
            f"{engine_s / direct_s:>7.0f}x{args.n / engine_s:>10.0f}"
        )
    marginal = (per_saga["10 steps, chain"] - per_saga["1 step"]) / 9
    print()
    fixed = per_saga["1 step"] - marginal
    print(f"fixed cost per saga (a 1-step saga minus one step): ~{fixed:.0f} us")
    print(f"marginal cost per additional chained step:          ~{marginal:.0f} us")


if __name__ == "__main__":
    asyncio.run(main())
