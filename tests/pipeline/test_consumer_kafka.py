"""The consumer against a real broker, with the fake engine."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest

from consumer.contract import EvaluationResult
from consumer.engine.fake import FakeEngine
from consumer.http import HttpServer, create_app
from consumer.metrics import Metrics
from consumer.testing.topics import (
    at_least,
    committed,
    committed_to_end,
    count_events,
    health_kafka,
    items,
    job,
    produce,
    read_until,
    running,
    values,
    wait_for,
)
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames

pytestmark = pytest.mark.kafka


async def test_a_2000_item_job_gives_2000_results_and_ordered_progress(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    engine = FakeEngine(delay_s=0.02)  # slow enough for the scheduler to fill its engine depth
    async with running(settings, engine):
        await produce(kafka_bootstrap, topic_names.requests, [(b"big", job("big", items(2000)))])
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1)))
        results = values(await read_until(kafka_bootstrap, topic_names.results, at_least(2000)))

    assert len(results) == 2000
    assert {r["result_id"] for r in results} == {f"big#{i}" for i in range(2000)}
    for raw in results[:50]:
        EvaluationResult.model_validate(raw)
    assert engine.max_in_flight > 100  # the job went to the engine at once, not in tens

    kinds = [e["event"] for e in progress]
    assert kinds[0] == "accepted" and kinds[-1] == "complete" and kinds.count("complete") == 1
    assert progress[0]["data"]["total_items"] == 2000 and progress[0]["data"]["status"] == "processing"
    batches = [e["data"] for e in progress if e["event"] == "batch_complete"]
    assert [b["batch_number"] for b in batches] == list(range(1, len(batches) + 1))
    completed = [b["progress"]["completed"] for b in batches]
    assert completed == sorted(completed) and completed[-1] == 2000
    assert sum(len(b["results"]) for b in batches) == 2000  # every result reported exactly once
    assert all(len(b["results"]) <= settings.jobs.batch_size for b in batches)
    assert batches[-1]["progress"]["estimated_remaining_seconds"] == 0
    assert all(b["progress"]["estimated_remaining_seconds"] >= 0 for b in batches)
    assert all(0 < b["progress"]["percentage"] <= 100 for b in batches)
    complete = progress[-1]["data"]
    assert (complete["total_processed"], complete["succeeded"], complete["failed"]) == (2000, 2000, 0)
    assert complete["status"] == "completed"


async def test_parallel_jobs_over_three_partitions_and_offsets_committed(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    engine = FakeEngine(delay_s=0.01)
    job_ids = [f"school-{n}/term-1" for n in range(9)]
    async with running(settings, engine):
        await produce(kafka_bootstrap, topic_names.requests, [(j.encode(), job(j, items(40))) for j in job_ids])
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 9)))
        results = values(await read_until(kafka_bootstrap, topic_names.results, at_least(9 * 40)))
        assert await committed_to_end(kafka_bootstrap, settings.kafka.group_id, topic_names.requests)
    per_job = Counter(r["job_id"] for r in results)
    assert per_job == dict.fromkeys(job_ids, 40)
    assert engine.max_in_flight > 40  # jobs ran side by side
    completes = {e["job_id"]: e["data"] for e in progress if e["event"] == "complete"}
    assert set(completes) == set(job_ids) and all(c["succeeded"] == 40 for c in completes.values())
    offsets = await committed(kafka_bootstrap, settings.kafka.group_id, topic_names.requests, 3)
    assert sum(o or 0 for o in offsets.values()) == 9  # every request consumed and committed
    assert sum(1 for o in offsets.values() if o) >= 2  # keys spread the jobs over partitions


BAD_MESSAGES: list[tuple[str, bytes | None]] = [
    ("invalid_json", b'{"job_id": "x", "items": [}'),
    ("invalid_request", json.dumps({"job_id": "m", "items": [{"id_alumno": "A1", "curso": "1r"}]}).encode()),
    ("invalid_request", job("e", [{**items(1)[0], "respuesta": "   "}])),
    ("invalid_request", job("too-many", items(2001))),
    ("invalid_request", job("bad id!", items(1))),
    ("invalid_utf8", b"\xff\xfe\x00garbage"),
    ("empty_value", None),
]


async def test_bad_messages_go_to_the_dlt_and_the_next_valid_one_is_processed(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    metrics = Metrics()
    messages = [(b"same-key", value) for _, value in BAD_MESSAGES] + [(b"same-key", job("good", items(3)))]
    async with running(settings, FakeEngine(), metrics):
        await produce(kafka_bootstrap, topic_names.requests, messages, headers=[("trace", b"t-1")])
        dead = await read_until(kafka_bootstrap, topic_names.dlt, at_least(len(BAD_MESSAGES)))
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1)))
    assert progress[-1]["job_id"] == "good" and progress[-1]["data"]["succeeded"] == 3
    dead.sort(key=lambda r: int(dict(r.headers)["texteval.original.offset"]))
    assert len(dead) == len(BAD_MESSAGES)
    for record, (reason, value) in zip(dead, BAD_MESSAGES, strict=True):
        headers = dict(record.headers)
        assert record.value == value and record.key == b"same-key"  # the original, unchanged
        assert headers["trace"] == b"t-1"
        assert headers["texteval.error.reason"] == reason.encode()
        assert headers["texteval.original.topic"] == topic_names.requests.encode()
        assert headers["texteval.consumer.group"] == settings.kafka.group_id.encode()
        assert int(headers["texteval.original.timestamp"]) > 0
        assert headers["texteval.error.detail"]
    details = [dict(r.headers)["texteval.error.detail"].decode() for r in dead]
    assert "items.0.respuesta" in details[1] and "items.0.respuesta" in details[2]
    assert "2001 items" in details[3] and "job_id" in details[4]
    assert metrics.registry.get_sample_value("texteval_dead_letters_total", {"reason": "invalid_request"}) == 4


async def test_too_long_item_gets_an_error_result_and_the_job_goes_on(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    batch = items(3)
    batch[1]["respuesta"] = "paraula " * 2400  # ~19,000 characters: past the fake's 2048-token context
    async with running(settings, FakeEngine()):
        await produce(kafka_bootstrap, topic_names.requests, [(b"j", job("long", batch))])
        results = values(await read_until(kafka_bootstrap, topic_names.results, at_least(3)))
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1)))
    by_index = {r["item_index"]: r for r in results}
    assert by_index[1]["status"] == "error" and by_index[1]["error"]["code"] == "input_too_long"
    assert by_index[1]["nota"] is None
    assert by_index[0]["status"] == by_index[2]["status"] == "ok"
    assert (progress[-1]["data"]["succeeded"], progress[-1]["data"]["failed"]) == (2, 1)


async def test_partitions_pause_at_the_inflight_cap_and_resume(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for(MAX_INFLIGHT_ITEMS=20)
    engine = FakeEngine(delay_s=0.3)
    metrics = Metrics()
    paused_seen = 0.0
    async with running(settings, engine, metrics, partitions=1) as app:
        await produce(kafka_bootstrap, topic_names.requests, [(b"k", job(f"j{n}", items(15))) for n in range(4)])

        async def watch() -> None:
            nonlocal paused_seen
            while True:
                paused_seen = max(paused_seen, metrics.registry.get_sample_value("texteval_partitions_paused") or 0.0)
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 4)))
        watcher.cancel()
        await wait_for(lambda: metrics.registry.get_sample_value("texteval_partitions_paused") == 0)
        assert health_kafka(app)["paused_partitions"] == 0
    assert paused_seen == 1  # the one partition was paused while full
    assert engine.max_in_flight <= 20  # the cap held: one 15-item job at a time
    assert {e["job_id"] for e in progress if e["event"] == "complete"} == {"j0", "j1", "j2", "j3"}


async def test_health_and_metrics_over_http(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    metrics = Metrics()
    engine = FakeEngine()
    async with running(settings, engine, metrics) as app:
        server = HttpServer(create_app(app, metrics), "127.0.0.1", 0)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                await wait_for(lambda: app.health_report().ready)
                health = await client.get("/health")
                assert health.status_code == 200
                body = health.json()
                assert body["status"] == "healthy" and body["model_loaded"] is True
                assert body["gpu_available"] is False and body["kafka"]["group_member"] is True
                await produce(kafka_bootstrap, topic_names.requests, [(b"k", job("h", items(12))), (b"k", b"{")])
                await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1))
                await read_until(kafka_bootstrap, topic_names.dlt, at_least(1))
                text = (await client.get("/metrics")).text
                assert 'texteval_items_graded_total{error_code="",status="ok"} 12.0' in text
                assert 'texteval_dead_letters_total{reason="invalid_json"} 1.0' in text
                assert "texteval_jobs_completed_total 1.0" in text
                assert "texteval_item_latency_seconds_count 12.0" in text
                assert "texteval_progress_event_latency_seconds_count 12.0" in text
                await wait_for(lambda: "texteval_consumer_lag{" in metrics_text(metrics))
                engine.kill("gpu fell off the bus")
                down = await client.get("/health")
                assert down.status_code == 503
                assert any("gpu fell off the bus" in reason for reason in down.json()["reasons"])
        finally:
            await server.stop()


def metrics_text(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()
