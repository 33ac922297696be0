"""``texteval run`` as its own process: health over HTTP, SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from consumer.testing.processes import service_env
from consumer.testing.topics import count_events, items, job, produce, read_until, values
from consumer.tools.broker import free_port
from tests.helpers import REPO, SettingsFactory
from tests.kafka_harness import TopicNames

pytestmark = [pytest.mark.kafka, pytest.mark.process]


async def test_run_serves_health_and_drains_on_sigterm(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames, tmp_path: Path
) -> None:
    settings = settings_for(SHUTDOWN_GRACE_S=20)
    port = free_port()
    log = tmp_path / "service.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumer.tools.cli", "run", "--engine", "fake", "--fake-delay-ms", "20",
            cwd=REPO, env={**service_env(settings), "PORT": str(port), "KAFKA_CREATE_TOPICS": "true"},
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            deadline = time.monotonic() + 60
            while not await ready():
                assert proc.returncode is None, "service exited early"
                assert time.monotonic() < deadline, "service never became healthy"
                await asyncio.sleep(0.2)
            # A job long enough to be mid-flight when SIGTERM arrives.
            await produce(kafka_bootstrap, topic_names.requests, [(b"k", job("sig", items(300)))])
            await read_until(kafka_bootstrap, topic_names.progress, count_events("batch_complete", 2))
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while (draining := await client.get("/health")).status_code == 200:
                assert time.monotonic() < deadline, "health stayed green after SIGTERM"
                await asyncio.sleep(0.02)
            assert draining.status_code == 503 and "draining" in draining.json()["reasons"]
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = log.read_text()
    # Drained, not aborted: the job finished and every item has one result.
    progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1)))
    assert progress[-1]["data"]["total_processed"] == 300
    results = values(await read_until(kafka_bootstrap, topic_names.results, lambda r: len(r) >= 300))
    assert len({r["result_id"] for r in results}) == len(results) == 300
    assert "grace period over" not in output
    assert "La fotosíntesi produeix" not in output  # no student text in the logs
