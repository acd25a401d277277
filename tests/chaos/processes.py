"""The processes of the chaos test: `sagaz worker`s it kills, pauses and replaces, and
the consumer it kills and restarts. Each process writes its output to a log file of its
own (read back for the ledger: how much a worker logged during the chaos)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)
    paused: bool = False
    resumed: float = 0.0
    killed: bool = False

    @property
    def alive(self) -> bool:
        return not self.killed and self.popen.poll() is None

    async def kill(self) -> None:
        self.killed = True
        self.popen.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.popen.wait, 10)


class ProcessGroup:
    """Starts processes with the repository on PYTHONPATH, logs in `log_dir`."""

    def __init__(self, log_dir: Path, environment: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.environment = {**os.environ, "PYTHONPATH": str(ROOT), **environment}
        self.started: list[Process] = []

    def spawn(self, name: str, command: list[str]) -> Process:
        log = self.log_dir / f"{name}-{len(self.started)}.log"
        with log.open("wb") as output:
            popen = subprocess.Popen(
                command, cwd=ROOT, env=self.environment, stdout=output, stderr=subprocess.STDOUT
            )
        process = Process(popen, log)
        self.started.append(process)
        return process

    def terminate_all(self, timeout: float = 20) -> list[int | None]:
        """SIGTERM (after SIGCONT) what still runs, SIGKILL what does not exit in time;
        the exit status of each process terminated here."""
        running = [p for p in self.started if p.popen.poll() is None]
        for process in running:
            process.popen.send_signal(signal.SIGCONT)
            process.popen.send_signal(signal.SIGTERM)
        statuses: list[int | None] = []
        for process in running:
            try:
                statuses.append(process.popen.wait(timeout))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
                statuses.append(None)
        return statuses

    def log_text(self) -> str:
        return "".join(p.log.read_text(errors="replace") for p in self.started)


class Workers(ProcessGroup):
    """`size` `sagaz worker` processes; `kill_one` and `pause_one` act on a running,
    unpaused one and keep `size` processes alive."""

    def __init__(
        self, log_dir: Path, environment: dict[str, str], arguments: list[str], size: int,
        rng: random.Random,
    ) -> None:  # fmt: skip
        super().__init__(log_dir, environment)
        self.arguments = arguments
        self.size = size
        self.rng = rng
        self.kills = 0
        self.pauses: list[float] = []

    def start(self) -> Process:
        command = [sys.executable, "-m", "sagaz", "worker", *self.arguments]
        return self.spawn("worker", command)

    def start_all(self) -> None:
        for _ in range(self.size):
            self.start()

    @property
    def current(self) -> list[Process]:
        return [p for p in self.started if p.alive]

    def _victim(self, prefer: Collection[int]) -> Process | None:
        # A worker just resumed is left alone a moment: what it does after its pause
        # (an effect written after the new owner compensated) is what the pause tests.
        now = time.monotonic()
        candidates = [p for p in self.current if not p.paused and now - p.resumed > 3.0]
        for pid in prefer:
            for process in candidates:
                if process.popen.pid == pid:
                    return process
        # Prefer a worker that had time to claim something over one still importing.
        settled = [p for p in candidates if time.monotonic() - p.started > 1.5]
        pool = settled or candidates
        return self.rng.choice(pool) if pool else None

    async def kill_one(self, prefer: Collection[int] = ()) -> int | None:
        """SIGKILL one worker (one whose pid is in `prefer` when one runs) and start its
        replacement at once; the pid killed."""
        victim = self._victim(prefer)
        if victim is None:
            return None
        await victim.kill()
        self.kills += 1
        self.start()
        return victim.popen.pid

    async def pause_one(self, seconds: float, prefer: Collection[int] = ()) -> int | None:
        """SIGSTOP one worker (preferably one in `prefer`) for `seconds` (longer than its
        lease), then SIGCONT it."""
        victim = self._victim(prefer)
        if victim is None:
            return None
        victim.paused = True
        victim.popen.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        try:
            await asyncio.sleep(seconds)
        finally:
            victim.popen.send_signal(signal.SIGCONT)
            victim.paused = False
            victim.resumed = time.monotonic()
        self.pauses.append(time.monotonic() - started)
        return victim.popen.pid


class Consumer(ProcessGroup):
    """The consumer process (tests/chaos/consumer.py); `kill_and_restart` SIGKILLs it."""

    def __init__(self, log_dir: Path, environment: dict[str, str], arguments: list[str]) -> None:
        super().__init__(log_dir, environment)
        self.arguments = arguments
        self.kills = 0

    def start(self) -> Process:
        command = [sys.executable, "-m", "tests.chaos.consumer", *self.arguments]
        return self.spawn("consumer", command)

    async def kill_and_restart(self) -> None:
        for process in [p for p in self.started if p.alive]:
            await process.kill()
            self.kills += 1
        self.start()
