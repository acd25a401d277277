"""Fixtures of the chaos test: its own PostgreSQL cluster (see cluster.py).

Set SAGAZ_CHAOS_KEEP=1 to keep the cluster after the run, to inspect it (its port is in
the ledger); drop it with `pg_dropcluster --stop VERSION NAME`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.chaos.cluster import Cluster, ClusterUnavailable, skip_or_fail


@pytest.fixture(scope="module")
def chaos_cluster() -> Iterator[Cluster]:
    """A running cluster of the test's own on a free port, dropped afterwards. Skipped
    with the reason when this machine cannot make one; a failure under CI=true."""
    try:
        cluster = Cluster.create()
    except ClusterUnavailable as reason:
        skip_or_fail(str(reason))
        raise  # unreachable: skip_or_fail raises
    try:
        yield cluster
    finally:
        if not os.environ.get("SAGAZ_CHAOS_KEEP"):
            cluster.drop()
