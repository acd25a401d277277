"""A PostgreSQL cluster of the chaos test's own, made with the Debian cluster tools.

`pg_createcluster` creates it on a free port (trust authentication, listening on
127.0.0.1 only, fsync off: an immediate restart is not an OS crash, so nothing committed
is lost), `pg_ctlcluster` starts and restarts it (`-m immediate`: a crash of the server,
nothing flushed at shutdown), `pg_dropcluster --stop` removes it. Restarting it disturbs
no other test: they use the main cluster. Clusters left by a chaos run that was killed
are dropped by the next one (their name carries the creating process id).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

TOOLS = ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "pg_lsclusters")
PREFIX = "sagaz_chaos_"
SKIP_SYSTEMCTL = "--skip-systemctl-redirect"
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "300",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


class ClusterUnavailable(Exception):
    """This machine cannot run a cluster of the test's own (the reason says why)."""


def skip_or_fail(reason: str) -> None:
    """Skip with `reason`; under CI=true a missing tool is a failure, not a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"chaos test under CI: {reason}")
    pytest.skip(reason)


def installed_version() -> str:
    """The newest PostgreSQL major version the Debian tools can create clusters for."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise ClusterUnavailable(
            f"the Debian PostgreSQL cluster tools are missing ({', '.join(missing)}): "
            "apt-get install postgresql postgresql-common"
        )
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            "pg_createcluster needs root (it writes /etc/postgresql and runs the server "
            "as the postgres user); run the chaos test as root"
        )
    versions = sorted(
        (p.name for p in Path("/usr/lib/postgresql").glob("*") if (p / "bin/initdb").exists()),
        key=lambda name: [int(part) for part in re.findall(r"\d+", name)],
    )
    if not versions:
        raise ClusterUnavailable("no PostgreSQL server binaries under /usr/lib/postgresql")
    return versions[-1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _run(*command: str, timeout: float = 120) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip() or done.stdout}"
        )
    return done.stdout


@dataclass
class Cluster:
    """One running cluster: `url` reaches its `postgres` database as `postgres`."""

    version: str
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @classmethod
    def create(cls) -> Cluster:
        version = installed_version()
        drop_abandoned(version)
        cluster = cls(version, f"{PREFIX}{os.getpid()}_{uuid.uuid4().hex[:6]}", free_port())
        _run(
            "pg_createcluster", "--start-conf=manual", "--port", str(cluster.port),
            version, cluster.name, "--",
            "--auth-local=trust", "--auth-host=trust", "--no-sync",
        )  # fmt: skip
        try:
            conf = Path("/etc/postgresql", version, cluster.name, "conf.d", "chaos.conf")
            conf.write_text("".join(f"{key} = {value}\n" for key, value in SETTINGS.items()))
            cluster.ctl("start")
            cluster.wait_ready()
        except BaseException:
            cluster.drop()
            raise
        return cluster

    def ctl(self, action: str, *options: str) -> None:
        _run("pg_ctlcluster", SKIP_SYSTEMCTL, *options, self.version, self.name, action)

    def restart_command(self) -> list[str]:
        """The command that crash-restarts the server (`-m immediate`)."""
        return ["pg_ctlcluster", SKIP_SYSTEMCTL, "-m", "immediate", self.version, self.name,
                "restart"]  # fmt: skip

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while True:
            done = subprocess.run(
                ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster {self.name} not ready after {seconds} s")
            time.sleep(0.1)

    def drop(self) -> None:
        _run("pg_dropcluster", "--stop", self.version, self.name)


def drop_abandoned(version: str) -> None:
    """Drop the chaos clusters whose creating process is gone (a run that was killed)."""
    for line in _run("pg_lsclusters", "--no-header").splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != version or not fields[1].startswith(PREFIX):
            continue
        pid = fields[1][len(PREFIX) :].split("_", 1)[0]
        if pid.isdigit() and not Path("/proc", pid).exists():
            _run("pg_dropcluster", "--stop", version, fields[1])
