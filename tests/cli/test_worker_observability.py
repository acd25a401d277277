"""`sagaz worker --metrics-port` serves metrics that Prometheus' parser reads, and
`--log-format json` writes one JSON object per line carrying the saga fields."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from sagaz import outbox, start_saga
from tests.cli.conftest import StartWorker
from tests.cli.sagas_for_cli import FlakySaga
from tests.conftest import DatabaseUrls

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_port_and_json_logs(
    pg: DatabaseUrls, tmp_path: Path, start_worker: StartWorker
) -> None:
    engine = pg.sync_engine()
    with Session(engine) as session:
        completed = start_saga(session, FlakySaga, {"counter": str(tmp_path / "a"), "failures": 0})
        compensated = start_saga(
            session, FlakySaga, {"counter": str(tmp_path / "b"), "failures": 9}
        )
        outbox.add(session, "orders", {"n": 1})
        session.commit()
    engine.dispose()
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")},
        "PYTHONPATH": str(ROOT),
        "SAGAZ_DATABASE_URL": pg.url,
        "SAGAZ_MAX_RETRIES": "0",
        "SAGAZ_LOG_TRANSITIONS": "true",
        "SAGAZ_METRICS_PORT": str(port),
    }
    process = start_worker(tmp_path, environment, "--log-format", "json")

    finished = ("sagaz_sagas_finished_total", (("saga", "cli-flaky"), ("status", "completed")))
    undone = ("sagaz_sagas_finished_total", (("saga", "cli-flaky"), ("status", "compensated")))
    published = ("sagaz_outbox_published_total", ())
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    deadline = time.monotonic() + 60
    while not (samples.get(finished) and samples.get(undone) and samples.get(published)):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, samples
        time.sleep(0.1)
        try:
            samples = scrape(port)
        except OSError:
            continue  # not serving yet
    assert (samples[finished], samples[undone], samples[published]) == (1, 1, 1)
    assert samples[("sagaz_sagas_started_total", (("saga", "cli-flaky"),))] == 2
    assert samples[("sagaz_outbox_pending", ())] == 0
    assert samples[("sagaz_outbox_dead", ())] == 0
    assert samples[("sagaz_outbox_publish_latency_seconds_count", ())] == 1
    step = (("outcome", "failed"), ("saga", "cli-flaky"), ("step", "flaky"))
    assert samples[("sagaz_step_duration_seconds_count", step)] == 1

    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    records = [json.loads(line) for line in errors.splitlines()]  # every line is one object
    assert {"time", "level", "logger", "message"} <= set(records[0])
    first_failure = "error=RuntimeError: flaky failure 1 of 9"
    failed = [r for r in records if r["message"].endswith(first_failure)]
    assert len(failed) == 1, errors
    assert failed[0]["saga_id"] == compensated
    assert (failed[0]["saga_name"], failed[0]["step"], failed[0]["attempt"]) == (
        "cli-flaky",
        "flaky",
        1,
    )
    done = [r for r in records if r.get("saga_id") == completed]
    assert any("saga_finished" in r["message"] for r in done)
    assert "password" not in errors


def test_a_metrics_port_in_use_is_a_one_line_error(sqlite: DatabaseUrls) -> None:
    from click.testing import CliRunner

    from sagaz.cli import main

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main,
            ["worker", "--url", sqlite.url, "--no-sagas", "--metrics-port", str(port)],
            catch_exceptions=False,
        )
    assert result.exit_code == 2, result.output
    assert f"--metrics-port {port}:" in result.output
    assert "Traceback" not in result.output
