"""The start-up canary in the running service (fake engine, real broker, real processes).

A miss keeps /health 503 with the reason, texteval_canary_passed 0, and the
consumer out of its group: a job waiting on the requests topic is neither
graded nor committed. The same group with a matching canary turns ready and
grades that job.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest

from consumer.contract import Item
from consumer.engine.canary import CanaryItem, dump_canary
from consumer.engine.fake import deterministic_script
from consumer.testing.processes import ServiceProcess
from consumer.testing.topics import committed, create_topics, items, job, make_settings, produce, read_all, read_until
from tests.kafka_harness import TopicNames

pytestmark = [pytest.mark.kafka, pytest.mark.process]

SECRET = "Resposta privada de l'alumne"


def write_canary(path: Path, *, miss_at: int | None) -> Path:
    entries = []
    for index in range(1, 5):
        item = Item(
            id_alumno=f"K{index}", curso="2n ESO", consigna="Què és un ecosistema?", respuesta=f"{SECRET} {index}"
        )
        nota = json.loads(deterministic_script(item, 0).text)["nota"]  # what the fake engine will give
        if index == miss_at:
            nota = (nota + 3) % 6  # 3 points away (or 3 the other way): beyond any tolerance below 3
        entries.append(CanaryItem(item=item, nota=nota))
    path.write_text(dump_canary(entries), encoding="utf-8")
    return path


async def canary_metric(service: ServiceProcess) -> float:
    async with httpx.AsyncClient(timeout=2.0) as client:
        text = (await client.get(f"http://127.0.0.1:{service.port}/metrics")).text
    found = re.search(r"^texteval_canary_passed (\S+)$", text, re.MULTILINE)
    assert found, "texteval_canary_passed not exported"
    return float(found.group(1))


async def wait_for_reason(service: ServiceProcess, fragment: str, timeout_s: float = 60) -> dict[str, object]:
    async with asyncio.timeout(timeout_s):
        while True:
            assert service.running, f"consumer exited: {service.log_tail()}"
            body = await service.health_body()
            if fragment in body:
                parsed = json.loads(body)
                assert isinstance(parsed, dict)
                return parsed
            await asyncio.sleep(0.1)


async def test_a_canary_miss_keeps_the_consumer_unready_and_out_of_the_group(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames, tmp_path: Path
) -> None:
    await create_topics(kafka_bootstrap, topic_names)
    missing = make_settings(
        kafka_bootstrap,
        topic_names,
        kafka_group_kwargs,
        CANARY_FILE=str(write_canary(tmp_path / "miss.jsonl", miss_at=3)),
    )
    await produce(kafka_bootstrap, topic_names.requests, [(b"k", job("waiting", items(3)))])
    failing = await ServiceProcess(missing, tmp_path, "miss", delay_ms=5).start()
    try:
        body = await wait_for_reason(failing, "canary failed")
        assert await failing.health() == 503
        reasons = body["reasons"]
        assert isinstance(reasons, list) and len(reasons) == 1
        assert re.fullmatch(
            r"canary failed: 1 of 4 items beyond tolerance 0 \(item 3 \(K3\): expected \d, got \d\)", reasons[0]
        )
        assert body["canary"] == "failed" and body["model_loaded"] is True
        assert SECRET not in json.dumps(body) and SECRET not in failing.log_path.read_text(errors="replace")
        assert await canary_metric(failing) == 0
        # Still unready on later looks, and the process keeps running for an operator to see why.
        for _ in range(10):
            await asyncio.sleep(0.2)
            assert await failing.health() == 503
        assert failing.running
        assert await read_all(kafka_bootstrap, topic_names.results) == []
        assert await read_all(kafka_bootstrap, topic_names.progress) == []
        assert set((await committed(kafka_bootstrap, missing.kafka.group_id, topic_names.requests, 3)).values()) == {
            None
        }
        failing.terminate()
        assert await failing.wait(30) == 0
    finally:
        await failing.close()

    # The same group with a canary the engine matches: ready, and the job that waited is graded.
    matching = missing.with_(canary_file=write_canary(tmp_path / "match.jsonl", miss_at=None))
    passing = await ServiceProcess(matching, tmp_path, "match", delay_ms=5).start()
    try:
        await passing.wait_healthy()
        assert await canary_metric(passing) == 1
        results = await read_until(kafka_bootstrap, topic_names.results, lambda records: len(records) >= 3)
        assert len(results) == 3
    finally:
        await passing.close()


async def test_a_bad_canary_file_stops_the_start_with_line_and_field(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"item": {"id_alumno": "K1", "curso": "c", "consigna": "q", "respuesta": SECRET}, "nota": 9}) + "\n",
        encoding="utf-8",
    )
    settings = make_settings(kafka_bootstrap, topic_names, kafka_group_kwargs, CANARY_FILE=str(bad))
    service = await ServiceProcess(settings, tmp_path, "bad").start()
    try:
        assert await service.wait(60) == 2
        log = service.log_path.read_text(errors="replace")
        assert f"canary file {bad} line 1: nota:" in log
        assert SECRET not in log
    finally:
        await service.close()
