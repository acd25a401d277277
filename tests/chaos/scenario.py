"""The chaos schedule: what is done to the running system, and when.

During `seconds`: a SIGKILL of a worker every 2-3 s (replaced at once; preferably one
whose relay holds a claim), worker pauses (SIGSTOP/SIGCONT) longer than the lease (of the
worker running the most doomed sagas' `reserve`), an immediate restart of PostgreSQL, cuts of the
workers' broker connections (the proxy drops them and refuses new ones for a moment) and
a SIGKILL of the consumer. The one-off disruptions are spread so they overlap the kills
but not each other.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from sagaz.journal import utcnow
from tests.brokers.broker_helpers import TcpProxy
from tests.chaos.cluster import Cluster
from tests.chaos.ledger import ChaosLog
from tests.chaos.processes import Consumer, Workers
from tests.chaos.targets import Targets


@dataclass(frozen=True)
class Schedule:
    seconds: float = 40.0
    kill_every: tuple[float, float] = (2.0, 3.0)
    pauses_at: tuple[float, ...] = (5.0, 25.0)
    pause_seconds: float = 8.0
    #: How long a pause may wait for a worker running a doomed saga's `reserve`.
    aim_seconds: float = 3.0
    restart_at: float = 17.0
    cuts_at: tuple[float, ...] = (12.5, 33.0)
    cut_seconds: float = 1.5
    consumer_kill_at: float = 22.0


async def run_chaos(
    schedule: Schedule,
    log: ChaosLog,
    *,
    workers: Workers,
    consumer: Consumer,
    proxy: TcpProxy,
    cluster: Cluster,
    targets: Targets,
    rng: random.Random,
) -> None:
    """Run the schedule to its end; `log` records what was done and when it ended."""
    start = time.monotonic()
    log.started = utcnow()
    log.scheduled = {
        # a kill every 2-3 s: at least one per 3 s of the chaos
        "worker SIGKILLs": int(schedule.seconds // schedule.kill_every[1]),
        "worker pauses longer than the lease": len(schedule.pauses_at),
        "PostgreSQL immediate restarts": 1,
        "broker connection cuts": len(schedule.cuts_at),
        "consumer SIGKILLs": 1,
    }

    async def at(offset: float) -> None:
        await asyncio.sleep(max(0.0, start + offset - time.monotonic()))

    def note(what: str) -> None:
        log.timeline.append(f"{time.monotonic() - start:5.1f} {what}")

    async def kills() -> None:
        offset = 0.0
        while True:
            offset += rng.uniform(*schedule.kill_every)
            if offset > schedule.seconds:
                return
            await at(offset)
            holders = await targets.relay_claim_holders()
            pid = await workers.kill_one(holders)
            log.worker_kills = workers.kills
            caught = pid in holders and await targets.still_claimed_by(pid)
            log.kills_mid_batch += caught
            note(f"SIGKILL worker {pid}{' (its relay held claims)' if caught else ''}")

    async def pause(offset: float) -> None:
        await at(offset)
        aimed = await targets.doomed_in_reserve()
        give_up = time.monotonic() + schedule.aim_seconds
        while not aimed and time.monotonic() < give_up:
            await asyncio.sleep(0.1)
            aimed = await targets.doomed_in_reserve()
        note(f"SIGSTOP (workers in a doomed reserve: {aimed})")
        pid = await workers.pause_one(schedule.pause_seconds, aimed)
        note(f"SIGCONT worker {pid}")
        log.pauses = list(workers.pauses)

    async def restart() -> None:
        await at(schedule.restart_at)
        note("PostgreSQL restart -m immediate")
        process = await asyncio.create_subprocess_exec(*cluster.restart_command())
        if await process.wait() != 0:
            raise RuntimeError(f"{cluster.restart_command()} failed")
        log.postgres_restarts += 1
        note("PostgreSQL restarted")

    async def cut(offset: float) -> None:
        await at(offset)
        note("broker connections cut")
        proxy.drop()
        await asyncio.sleep(schedule.cut_seconds)
        proxy.restore()
        log.broker_cuts += 1
        note("broker reachable again")

    async def kill_consumer() -> None:
        await at(schedule.consumer_kill_at)
        await consumer.kill_and_restart()
        log.consumer_kills = consumer.kills
        note("consumer SIGKILLed and restarted")

    await asyncio.gather(
        kills(),
        *(pause(offset) for offset in schedule.pauses_at),
        restart(),
        *(cut(offset) for offset in schedule.cuts_at),
        kill_consumer(),
    )
    log.ended = utcnow()
    log.aiming_errors = list(targets.errors)
