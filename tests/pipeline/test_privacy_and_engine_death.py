"""``texteval run`` with the real engine at DEBUG: no student text in any log line;
then the engine process is killed: health goes red, the service exits 3, nothing is committed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from consumer.testing.processes import service_env
from consumer.testing.topics import (
    TopicNames,
    at_least,
    committed,
    count_events,
    create_topics,
    job,
    produce,
    read_until,
    values,
)
from consumer.tools.broker import free_port
from tests.helpers import REPO, SettingsFactory

pytestmark = [pytest.mark.engine, pytest.mark.kafka, pytest.mark.process]

CANARIES = ["Canari7Q3X la meva àvia Montserrat", "ZK42canari consigna secreta", "Olot-canari-9981"]


def canary_items() -> list[dict[str, str]]:
    return [
        {"id_alumno": f"P{i}", "curso": "2n ESO", "consigna": f"Explica-ho ({CANARIES[1]})",
         "respuesta": f"{CANARIES[0]} viu a {CANARIES[2]}. Resposta número {i}."}
        for i in range(3)
    ]  # fmt: skip


async def health(port: int) -> httpx.Response | None:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return await client.get(f"http://127.0.0.1:{port}/health")
    except httpx.TransportError:
        return None


async def test_no_student_text_in_debug_logs_and_engine_death_exits_for_restart(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames, tmp_path: Path
) -> None:
    settings = settings_for()
    await create_topics(kafka_bootstrap, topic_names, partitions=1)
    port = free_port()

    async def committed_offset() -> int | None:
        return (await committed(kafka_bootstrap, settings.kafka.group_id, topic_names.requests, 1))[0]

    env = {**service_env(settings), "PORT": str(port), "LOG_LEVEL": "DEBUG", "VLLM_LOGGING_LEVEL": "DEBUG"}
    # A short feedback: a smaller grammar to compile at start and fewer tokens
    # per text; what is checked here (logs, death, commits) does not depend on it.
    env["FEEDBACK_MAX_CHARS"] = "40"
    log = tmp_path / "service.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumer.tools.cli", "run", cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180
        while (response := await health(port)) is None or response.status_code != 200:
            assert proc.returncode is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "engine never became ready"
            await asyncio.sleep(0.5)

        # A graded job and a dead letter, both full of recognisable text.
        bad = json.dumps({"job_id": "priv-bad", "items": [{**canary_items()[0], "curso": ""}]}).encode()
        await produce(kafka_bootstrap, topic_names.requests, [(b"p", job("priv", canary_items())), (b"p", bad)])
        await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1), timeout_s=300)
        dead = await read_until(kafka_bootstrap, topic_names.dlt, at_least(1))
        assert all(c not in dict(dead[0].headers)["texteval.error.detail"].decode() for c in CANARIES)
        # Both requests done and acknowledged: the commit timer moves past them.
        deadline = time.monotonic() + 20
        while (first_offset_done := await committed_offset()) != 2:
            assert time.monotonic() < deadline, f"committed offset stuck at {first_offset_done}"
            await asyncio.sleep(0.2)

        # Now kill the engine's own processes under a running job.
        await produce(kafka_bootstrap, topic_names.requests, [(b"p", job("doomed", canary_items() * 20))])
        await read_until(kafka_bootstrap, topic_names.progress, count_events("accepted", 2), timeout_s=60)
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.send_signal(signal.SIGKILL)
        saw_red = False
        deadline = time.monotonic() + 60
        while proc.returncode is None and time.monotonic() < deadline:
            response = await health(port)
            saw_red = saw_red or (response is not None and response.status_code == 503)
            await asyncio.sleep(0.02)  # the red window before the exit can be short
        code = await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    text = log.read_text(errors="replace")
    assert "job complete: job_id=priv" in text  # the DEBUG run did log the work
    for canary in CANARIES:
        assert canary not in text, f"student text leaked into the logs: {canary!r}"
    assert saw_red and code == 3
    results = values(await read_until(kafka_bootstrap, topic_names.results, at_least(3)))
    assert not any(r["job_id"] == "doomed" and r["status"] == "error" for r in results)
    # The doomed job was not committed: a restarted service grades it again.
    assert await committed_offset() == 2
