"""The HTTP gateway against a real broker, with a consumer (fake engine) in-process.

The gateway runs with its production wiring (``gateway_serving``) on a free
loopback port; clients are the prototype's own libraries (requests +
sseclient-py) and httpx with httpx-sse.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import sseclient
from httpx_sse import aconnect_sse

from consumer.engine.fake import FakeEngine
from consumer.gateway.server import gateway_serving
from consumer.settings import Settings
from consumer.testing.processes import service_env
from consumer.testing.topics import (
    create_topics,
    items,
    job,
    make_settings,
    produce,
    read_until,
    running,
    values,
    wait_for,
)
from consumer.tools.broker import free_port
from tests.kafka_harness import TopicNames

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
SECRET_TEXT = "Text secret de l'alumne 7f3a"  # must never reach a log or an error body


def settings_for(bootstrap: str, topics: TopicNames, group: dict[str, int], **overrides: Any) -> Settings:
    control = topics.requests.replace(".requests", ".control")
    return make_settings(bootstrap, topics, group, KAFKA_CONTROL_TOPIC=control, BATCH_SIZE=5, **overrides)


async def make_topics(settings: Settings) -> None:
    await create_topics(settings.kafka.bootstrap_servers, settings.service_topics())


async def sse_events(client: httpx.AsyncClient, url: str, *, last_event_id: str | None = None,
                     limit: int | None = None) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
    """(id, payload) of each data event, until the stream ends or `limit` events."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    events: list[tuple[str, dict[str, Any]]] = []
    async with aconnect_sse(client, "GET", url, headers=headers) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for sse in source.aiter_sse():
            if not sse.data:
                continue
            assert sse.event == "message"  # no `event:` field: browsers' onmessage gets it
            events.append((sse.id, json.loads(sse.data)))
            if limit is not None and len(events) >= limit:
                break
    return events


def result_indexes(events: list[tuple[str, dict[str, Any]]]) -> list[int]:
    return [r["item_index"] for _, e in events if e["event"] == "batch_complete" for r in e["data"]["results"]]


@pytest.fixture
async def consumer_settings(kafka_bootstrap: str, kafka_group_kwargs: dict[str, int],
                            topic_names: TopicNames) -> AsyncIterator[Settings]:  # fmt: skip
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs)
    await make_topics(settings)
    async with running(settings, FakeEngine(delay_s=0.02)):
        yield settings


def prototype_client(base_url: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    """What the prototype's test_client.py does: requests.post, then sseclient over the stream."""
    answer = requests.post(f"{base_url}/evaluate", json=body, timeout=30)
    answer.raise_for_status()
    job_info = answer.json()
    response = requests.get(base_url + job_info["stream_url"], stream=True, timeout=60)
    kinds: list[str] = []
    results: list[dict[str, Any]] = []
    for event in sseclient.SSEClient(response).events():  # type: ignore[no-untyped-call]
        data = json.loads(event.data)
        kinds.append(data["event"])
        if data["event"] == "batch_complete":
            results.extend(data["data"]["results"])
        if data["event"] == "complete":
            break
    response.close()
    return job_info, kinds, results


async def test_the_prototypes_client_reaches_complete_with_every_result(consumer_settings: Settings) -> None:
    body = json.loads((REPO / "scripts" / "test_data.json").read_text(encoding="utf-8"))
    async with gateway_serving(consumer_settings) as (_, base):
        job_info, kinds, results = await asyncio.to_thread(prototype_client, base, body)
        async with httpx.AsyncClient(base_url=base) as client:
            status = (await client.get(f"/jobs/{job_info['job_id']}")).json()
            csv_text = (await client.get(f"/jobs/{job_info['job_id']}/results")).text
    assert set(job_info) == {"job_id", "total_items", "estimated_time_seconds", "status", "stream_url"}
    assert job_info["status"] == "queued" and job_info["total_items"] == len(body["items"])
    assert job_info["stream_url"] == f"/stream/{job_info['job_id']}"
    assert kinds[0] == "accepted" and kinds[-1] == "complete"
    assert sorted(r["item_index"] for r in results) == list(range(len(body["items"])))
    assert all(isinstance(r["nota"], int) and r["feedback"] for r in results)
    assert status["status"] == "completed" and status["completed"] == status["total_items"] == len(body["items"])
    assert len(csv_text.strip().splitlines()) == 1 + len(body["items"])


async def test_the_wire_format_has_ids_and_data_only(consumer_settings: Settings) -> None:
    async with gateway_serving(consumer_settings) as (_, base), httpx.AsyncClient(base_url=base) as client:
        posted = (await client.post("/evaluate", json={"job_id": "wire-1", "items": items(7)})).json()
        async with client.stream("GET", posted["stream_url"]) as response:
            raw = (await response.aread()).decode()
    lines = [line for line in raw.replace("\r\n", "\n").split("\n") if line]
    assert not [line for line in lines if line.startswith("event:")]
    assert {line.split(":", 1)[0] for line in lines} <= {"id", "data", "retry", ""}
    data = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
    assert data[0]["event"] == "accepted" and data[-1]["event"] == "complete"
    assert all(d["job_id"] == "wire-1" and "data" in d for d in data)


async def test_reconnecting_with_last_event_id_loses_and_repeats_nothing(consumer_settings: Settings) -> None:
    async with gateway_serving(consumer_settings) as (_, base), httpx.AsyncClient(base_url=base) as client:
        posted = (await client.post("/evaluate", json={"job_id": "resume-1", "items": items(60)})).json()
        first = await sse_events(client, posted["stream_url"], limit=3)
        # Reconnect twice more, each from the last id seen, until the job ends.
        second = await sse_events(client, posted["stream_url"], last_event_id=first[-1][0], limit=4)
        rest = await sse_events(client, posted["stream_url"], last_event_id=second[-1][0])
        late = await sse_events(client, posted["stream_url"])  # a late subscriber: the whole history
    seen = first + second + rest
    ids = [int(i) for i, _ in seen]
    assert ids == sorted(set(ids)), "event ids repeat or go backwards across reconnects"
    assert sorted(result_indexes(seen)) == list(range(60))
    assert seen[-1][1]["event"] == "complete"
    assert late == seen


async def test_a_gateway_restart_mid_job_loses_nothing(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs)
    await make_topics(settings)
    async with running(settings, FakeEngine(delay_s=0.05)):
        async with gateway_serving(settings) as (_, base), httpx.AsyncClient(base_url=base) as client:
            posted = (await client.post("/evaluate", json={"job_id": "restart-1", "items": items(80)})).json()
            before = await sse_events(client, posted["stream_url"], limit=3)
        assert before[-1][1]["event"] != "complete"
        # A new gateway process state: it knows the job only from the progress topic.
        async with gateway_serving(settings) as (_, base), httpx.AsyncClient(base_url=base) as client:
            after = await sse_events(client, posted["stream_url"], last_event_id=before[-1][0])
            status = (await client.get("/jobs/restart-1")).json()
    seen = before + after
    ids = [int(i) for i, _ in seen]
    assert ids == sorted(set(ids))
    assert sorted(result_indexes(seen)) == list(range(80))
    assert status["status"] == "completed" and status["completed"] == 80


async def test_jobs_produced_straight_to_kafka_are_served(consumer_settings: Settings) -> None:
    s = consumer_settings
    async with gateway_serving(s) as (_, base), httpx.AsyncClient(base_url=base) as client:
        await produce(s.kafka.bootstrap_servers, s.kafka.requests_topic, [(b"direct/1", job("direct/1", items(12)))])
        await read_until(s.kafka.bootstrap_servers, s.kafka.progress_topic,
                         lambda rs: any(v["event"] == "complete" for v in values(rs)))  # fmt: skip
        events = await sse_events(client, "/stream/direct/1")
        status = (await client.get("/jobs/direct/1")).json()
        jsonl = (await client.get("/jobs/direct/1/results", params={"format": "jsonl"})).text
        csv_answer = await client.get("/jobs/direct/1/results")
    assert events[0][1]["event"] == "accepted" and events[-1][1]["event"] == "complete"
    assert sorted(result_indexes(events)) == list(range(12))
    assert status["status"] == "completed" and status["succeeded"] + status["failed"] == 12
    rows = [json.loads(line) for line in jsonl.splitlines()]
    assert [r["item_index"] for r in rows] == list(range(12)) and rows[0]["job_id"] == "direct/1"
    assert csv_answer.headers["content-type"].startswith("text/csv")
    assert csv_answer.text.startswith("\ufeff")  # a byte-order mark: Excel reads UTF-8
    assert csv_answer.text.removeprefix("\ufeff").splitlines()[0] == (
        "job_id,item_index,id_alumno,status,nota,feedback,confidence,needs_review,review_reasons"
    )


async def test_the_same_job_id_is_one_job_and_a_different_request_conflicts(consumer_settings: Settings) -> None:
    body = {"job_id": "idem-1", "items": items(3)}
    async with gateway_serving(consumer_settings) as (_, base), httpx.AsyncClient(base_url=base) as client:
        first = await client.post("/evaluate", json=body)
        again = await client.post("/evaluate", json=body)
        other = await client.post("/evaluate", json={"job_id": "idem-1", "items": items(4)})
        await sse_events(client, "/stream/idem-1")
    s = consumer_settings
    with pytest.raises(AssertionError, match="timed out"):  # a second request never shows up
        await read_until(s.kafka.bootstrap_servers, s.kafka.requests_topic, lambda rs: len(rs) >= 2, timeout_s=3)
    assert first.status_code == again.status_code == 200
    assert again.json()["job_id"] == "idem-1" and again.json()["total_items"] == 3
    assert other.status_code == 409


async def test_cancel_produces_the_control_command_and_the_stream_ends_on_cancelled(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs)
    await make_topics(settings)
    # No consumer: the gateway's side alone. The consumer's answer (issue 13)
    # is played by producing its `cancelled` event.
    async with gateway_serving(settings) as (_, base), httpx.AsyncClient(base_url=base) as client:
        await client.post("/evaluate", json={"job_id": "cancel-1", "items": items(3)})
        assert (await client.get("/jobs/cancel-1")).json()["status"] == "queued"
        answer = await client.delete("/jobs/cancel-1")
        unknown = await client.delete("/jobs/nobody")
        commands = values(await read_until(kafka_bootstrap, settings.kafka.control_topic, lambda rs: len(rs) >= 1))
        cancelled = {"schema_version": 1, "event": "cancelled", "job_id": "cancel-1",
                     "data": {"total_items": 3, "completed": 0, "succeeded": 0, "failed": 0,
                              "total_time_seconds": 0.0, "status": "cancelled"}}  # fmt: skip
        await produce(kafka_bootstrap, settings.kafka.progress_topic, [(b"cancel-1", json.dumps(cancelled).encode())])
        events = await sse_events(client, "/stream/cancel-1")
        status = (await client.get("/jobs/cancel-1")).json()
        again = await client.delete("/jobs/cancel-1")
    assert answer.status_code == 202 and answer.json()["status"] == "cancel_requested"
    assert commands == [{"schema_version": 1, "action": "cancel", "job_id": "cancel-1"}]
    assert unknown.status_code == 404
    assert [e["event"] for _, e in events] == ["cancelled"]
    assert status["status"] == "cancelled" and again.status_code == 409


async def test_bad_input_gets_typed_errors_without_the_text(
    consumer_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="consumer")
    good = items(2, text=SECRET_TEXT)
    async with gateway_serving(consumer_settings, metrics=None) as (_, base), httpx.AsyncClient(base_url=base) as c:
        as_json = {"Content-Type": "application/json"}  # what every client sends with a body (else 415)
        malformed = await c.post("/evaluate", content=b'{"items": [' + SECRET_TEXT.encode(), headers=as_json)
        not_object = await c.post("/evaluate", json=[SECRET_TEXT])
        wrong_type = await c.post("/evaluate", json={"items": [{**good[0], "respuesta": 5}, good[1]]})
        blank = await c.post("/evaluate", json={"items": [good[0], {**good[1], "curso": "  "}]})
        too_long = await c.post("/evaluate", json={"items": [{**good[0], "respuesta": SECRET_TEXT * 2000}]})
        bad_id = await c.post("/evaluate", json={"job_id": "a b#" + SECRET_TEXT, "items": good})
        too_many = await c.post("/evaluate", json={"items": items(2001)})
        huge = await c.post("/evaluate", content=b"x" * (17 * 1024 * 1024), headers=as_json)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for _ in range(20):
                yield b" " * (1024 * 1024)

        huge_chunked = await c.post("/evaluate", content=chunks(), headers=as_json)
        unknown_stream = await sse_events(c, "/stream/no-such-job")
        unknown_job = await c.get("/jobs/no-such-job")
        unknown_results = await c.get("/jobs/no-such-job/results")
        bad_format = await c.get("/jobs/no-such-job/results", params={"format": "pdf"})
        ok = await c.post("/evaluate", json={"job_id": "fine-1", "items": good})
        bad_ids = [await c.get("/stream/fine-1", headers={"Last-Event-ID": v}) for v in ("abc", "-1", "1e3", "9" * 30)]
        after_bad = await sse_events(c, "/stream/fine-1")
    for answer, loc in ((malformed, ["body"]), (not_object, ["body"]),
                        (wrong_type, ["body", "items", 0, "respuesta"]), (blank, ["body", "items", 1, "curso"]),
                        (too_long, ["body", "items", 0, "respuesta"]), (bad_id, ["body", "job_id"]),
                        (too_many, ["body", "items"])):  # fmt: skip
        assert answer.status_code == 422, answer.text
        assert loc in [e["loc"][: len(loc)] for e in answer.json()["detail"]], answer.text
    assert huge.status_code == huge_chunked.status_code == 413
    assert [e for _, e in unknown_stream] == [{"error": "Job not found"}]
    assert unknown_job.status_code == unknown_results.status_code == 404
    assert bad_format.status_code == 422
    assert ok.status_code == 200 and after_bad[-1][1]["event"] == "complete"
    assert [a.status_code for a in bad_ids] == [400, 400, 400, 400]
    every_body = [malformed, not_object, wrong_type, blank, too_long, bad_id, too_many, huge, huge_chunked, *bad_ids]
    assert not [a for a in every_body if SECRET_TEXT in a.text or "7f3a" in a.text]
    assert "7f3a" not in caplog.text


async def test_api_keys_are_required_when_configured(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    key_one, key_two = "k-one-9x" + "1" * 32, "k-two-9y" + "2" * 32
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs,
                            GATEWAY_API_KEYS=f"auth={key_one}, auth={key_two}")  # fmt: skip
    await make_topics(settings)
    body = {"job_id": "1", "items": items(1)}
    async with gateway_serving(settings) as (_, base), httpx.AsyncClient(base_url=base) as client:
        none = await client.post("/evaluate", json=body)
        wrong = await client.post("/evaluate", json=body, headers={"Authorization": f"Bearer {key_one[:-1]}"})
        basic = await client.post("/evaluate", json=body, headers={"Authorization": f"Basic {key_one}"})
        right = await client.post("/evaluate", json=body, headers={"Authorization": f"Bearer {key_two}"})
        stream_none = await client.get("/stream/auth/1")
        status_query = await client.get("/jobs/auth/1", params={"access_token": key_one})
        delete_none = await client.delete("/jobs/auth/1")
        health = await client.get("/health")
        metrics = await client.get("/metrics")
        page = await client.get("/")
    assert none.status_code == wrong.status_code == basic.status_code == 401
    assert none.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200
    assert stream_none.status_code == delete_none.status_code == 401
    assert status_query.status_code == 200 and status_query.json()["job_id"] == "auth/1"
    assert health.status_code == 200 and health.json()["auth"] == "api_keys"
    assert metrics.status_code == 200 and page.status_code == 200
    # The server's side (the client's own httpx log prints its URLs, query token included).
    server_log = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert "k-one-9" not in server_log and "k-two-9" not in server_log


async def test_metrics_count_requests_streams_and_delivery(consumer_settings: Settings) -> None:
    async with gateway_serving(consumer_settings) as (gateway, base), httpx.AsyncClient(base_url=base) as client:
        posted = (await client.post("/evaluate", json={"job_id": "m-1", "items": items(10)})).json()
        await sse_events(client, posted["stream_url"])
        await client.get("/jobs/m-1")
        text = (await client.get("/metrics")).text
        health = (await client.get("/health")).json()
    assert 'texteval_gateway_requests_total{method="POST",route="/evaluate",status="200"} 1.0' in text
    assert 'route="/jobs/{job_id:path}"' in text and "m-1" not in text
    assert "texteval_gateway_open_streams 0.0" in text
    assert "texteval_gateway_event_delivery_latency_seconds_count" in text
    assert gateway.metrics.event_delivery_latency_seconds._sum.get() > 0  # live events were measured
    assert "texteval_gateway_tail_lag{partition=" in text
    assert health["status"] == "healthy" and health["jobs_kept"] >= 1


async def test_a_client_that_never_reads_is_dropped_and_others_are_served(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    # A write that takes no progress for 3 s (over 4 checks) drops a stream;
    # a reader that is merely slow (a busy machine) completes its writes and stays.
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs, GATEWAY_SEND_TIMEOUT_S=3)
    await make_topics(settings)
    # Progress events of ~100 kB each, produced straight to the topic: a
    # reader that never reads fills its socket buffers within a few.
    summaries = [{"id_alumno": f"A{i}", "item_index": i, "status": "ok", "nota": 3, "feedback": "f" * 100_000}
                 for i in range(80)]  # fmt: skip
    events = [{"event": "accepted", "job_id": "slow-1", "data": {"total_items": 80, "estimated_time_seconds": 1}}]
    events += [{"event": "batch_complete", "job_id": "slow-1",
                "data": {"batch_number": i + 1, "results": [summaries[i]],
                         "progress": {"completed": i + 1, "total": 80, "percentage": 1.0, "elapsed_seconds": 1.0,
                                      "estimated_remaining_seconds": 1.0, "avg_time_per_item": 0.1}}}
               for i in range(80)]  # fmt: skip
    done = {"total_processed": 80, "succeeded": 80, "failed": 0, "total_time_seconds": 8.0}
    events.append({"event": "complete", "job_id": "slow-1", "data": done})
    messages = [(b"slow-1", json.dumps({"schema_version": 1, **e}).encode()) for e in events]
    async with gateway_serving(settings) as (gateway, base):
        await produce(kafka_bootstrap, settings.kafka.progress_topic, messages)
        async with httpx.AsyncClient(base_url=base) as client:
            await wait_for(lambda: (r := gateway.store.get("slow-1")) is not None and r.finished)
            host, port = base.removeprefix("http://").split(":")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
            await asyncio.get_running_loop().sock_sendall(
                sock, f"GET /stream/slow-1 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            )
            await wait_for(lambda: gateway.store.open_streams == 1)  # it is stuck on ~8 MB it never reads
            seen = await sse_events(client, "/stream/slow-1")
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: gateway.store.open_streams == 0, timeout_s=60)
        open_after = gateway.store.open_streams
        stalled = gateway.metrics.registry.get_sample_value("texteval_gateway_streams_stalled_total")
        sock.close()
    assert sorted(result_indexes(seen)) == list(range(80)) and len(seen) == 82  # every event, once, in order
    assert [int(i) for i, _ in seen] == sorted({int(i) for i, _ in seen})
    assert open_after == 0, "the stream of a client that never reads was not closed"
    assert stalled == 1, "only the client that never reads is dropped, not the one that reads"


async def test_the_test_client_script_follows_a_job_to_its_results(consumer_settings: Settings, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("test_client_script", REPO / "scripts" / "test_client.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "results.csv"
    async with gateway_serving(consumer_settings) as (_, base):
        code = await asyncio.to_thread(script.main, ["--base-url", base, "--out", str(out)])
    assert code == 0
    rows = out.read_text(encoding="utf-8-sig").splitlines()
    assert rows[0].startswith("job_id,item_index") and len(rows) == 6


async def test_heartbeats_keep_an_idle_stream_open(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs, GATEWAY_HEARTBEAT_S=0.2)
    await make_topics(settings)
    async with gateway_serving(settings) as (_, base), httpx.AsyncClient(base_url=base) as client:
        await client.post("/evaluate", json={"job_id": "idle-1", "items": items(1)})  # no consumer: stays queued
        lines: list[str] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.2), client.stream("GET", "/stream/idle-1") as response:
                async for line in response.aiter_lines():
                    lines.append(line)
    comments = [line for line in lines if line.startswith(":")]
    assert "retry: 1000" in lines
    assert len(comments) >= 4, lines  # the opening comment, then a ping every 0.2 s
    assert not [line for line in lines if line.startswith("data:")]


async def test_cors_answers_the_configured_origins_only(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs,
                            GATEWAY_CORS_ORIGINS="https://school.example")  # fmt: skip
    await make_topics(settings)
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with gateway_serving(settings) as (_, base), httpx.AsyncClient(base_url=base) as client:
        allowed = await client.options("/evaluate", headers={"Origin": "https://school.example", **preflight})
        other = await client.options("/evaluate", headers={"Origin": "https://evil.example", **preflight})
        simple = await client.get("/health", headers={"Origin": "https://school.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://school.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert simple.headers["access-control-allow-origin"] == "https://school.example"


async def test_texteval_cancel_produces_the_control_command(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs)
    await make_topics(settings)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_CONTROL_TOPIC": settings.kafka.control_topic,
    }
    ok = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "consumer.tools.cli", "cancel", "school/j-1"],
                                 env=env, cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    bad = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "consumer.tools.cli", "cancel", "a b"],
                                  env=env, cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    commands = await read_until(kafka_bootstrap, settings.kafka.control_topic, lambda rs: len(rs) >= 1)
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode == 2 and "job_id" in bad.stderr
    assert [(r.key, json.loads(r.value or b"")) for r in commands] == [
        # 1.2: it acts for the job's own tenant (a command naming no one is ignored for a tenant's job).
        (b"school/j-1", {"schema_version": 1, "action": "cancel", "job_id": "school/j-1", "tenant": "school"})
    ]


async def test_delete_cancels_a_running_job_end_to_end(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs)
    await make_topics(settings)
    # One item at a time, 50 ms each: 200 items would take 10 s.
    async with (
        running(settings, FakeEngine(delay_s=0.05, max_concurrency=1)),
        gateway_serving(settings) as (_, base),
        httpx.AsyncClient(base_url=base) as client,
    ):
        posted = (await client.post("/evaluate", json={"job_id": "stop-1", "items": items(200)})).json()
        first = await sse_events(client, posted["stream_url"], limit=3)
        answer = await client.delete("/jobs/stop-1")
        async with asyncio.timeout(20):
            rest = await sse_events(client, posted["stream_url"], last_event_id=first[-1][0])
        status = (await client.get("/jobs/stop-1")).json()
    seen = first + rest
    assert answer.status_code == 202
    assert seen[-1][1]["event"] == "cancelled" and "complete" not in [e["event"] for _, e in seen]
    graded = result_indexes(seen)
    assert len(graded) == len(set(graded)) < 200
    assert seen[-1][1]["data"]["completed"] == len(graded) == status["completed"]
    assert status["status"] == "cancelled"


async def test_texteval_gateway_serves_until_sigterm_and_refuses_an_open_public_host(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs)
    await make_topics(settings)
    env = {**service_env(settings), "GATEWAY_API_KEYS": ""}
    cli = [sys.executable, "-m", "consumer.tools.cli", "gateway"]
    refused = await asyncio.to_thread(subprocess.run, [*cli, "--host", "0.0.0.0", "--port", "0"], env=env,
                                      cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    port = free_port()
    proc = await asyncio.create_subprocess_exec(*cli, "--port", str(port), env=env, cwd=REPO,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get("/health")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
            posted = await client.post("/evaluate", json={"job_id": "cli-1", "items": items(1)})
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stdout is not None
    log = (await proc.stdout.read()).decode()
    assert refused.returncode == 2 and "GATEWAY_API_KEYS" in refused.stderr
    assert posted.status_code == 200 and code == 0, log
    assert "job cli-1 queued" in log


async def test_a_job_whose_events_were_just_produced_is_found_at_once(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs)
    await make_topics(settings)

    def accepted(job_id: str) -> bytes:
        data = {"total_items": 5, "estimated_time_seconds": 1.0, "status": "processing"}
        return json.dumps({"schema_version": 1, "event": "accepted", "job_id": job_id, "data": data}).encode()

    async with gateway_serving(settings) as (gateway, base), httpx.AsyncClient(base_url=base) as client:
        await gateway.tail.caught_up.wait()
        answers = []
        for i in range(5):  # several: the tail must not have read it before the request by luck
            await produce(kafka_bootstrap, settings.kafka.progress_topic, [(b"fresh", accepted(f"fresh-{i}"))])
            answers.append(await client.get(f"/jobs/fresh-{i}"))
        unknown = await client.get("/jobs/never-produced")
    assert [a.status_code for a in answers] == [200] * 5, "a job produced a moment ago was 'not found'"
    assert answers[0].json()["status"] == "processing" and unknown.status_code == 404


async def test_a_gateway_that_met_a_job_part_way_never_calls_it_completed(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    """Issue 28, finding 2, against the real broker and gateway: the job's first half of the
    progress topic is older than the replay window (JOB_TTL_SECONDS, here 5 s), as for a gateway
    restarted mid-way through a job longer than an hour; the second half and the end are recent."""
    from aiokafka import AIOKafkaProducer

    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs, JOB_TTL_SECONDS="5")
    await make_topics(settings)
    job_id, total = "long/term-1", 40

    def event(kind: str, data: dict[str, Any]) -> bytes:
        return json.dumps({"schema_version": 1, "event": kind, "job_id": job_id, "data": data}).encode()

    def batch_of(first: int) -> bytes:
        results = [{"id_alumno": f"A{i}", "item_index": i, "status": "ok", "nota": 3, "feedback": "Bé."}
                   for i in range(first, first + 10)]  # fmt: skip
        progress = {"completed": first + 10, "total": total, "percentage": 0.0, "elapsed_seconds": 1.0,
                    "estimated_remaining_seconds": 1.0, "avg_time_per_item": 0.1}  # fmt: skip
        return event("batch_complete", {"batch_number": first // 10 + 1, "results": results, "progress": progress})

    first_half = [event("accepted", {"total_items": total, "estimated_time_seconds": 4}), batch_of(0), batch_of(10)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for value in first_half:
            await producer.send_and_wait(settings.kafka.progress_topic, value=value, key=job_id.encode())
        await asyncio.sleep(6)  # the first half is now older than the replay window (5 s)
        for value in (batch_of(20), batch_of(30)):
            await producer.send_and_wait(settings.kafka.progress_topic, value=value, key=job_id.encode())
        async with gateway_serving(settings) as (_, base), httpx.AsyncClient(base_url=base) as client:
            running_status = (await client.get(f"/jobs/{job_id}")).json()
            done = {"total_processed": total, "succeeded": total, "failed": 0, "total_time_seconds": 4.0}
            await producer.send_and_wait(
                settings.kafka.progress_topic, value=event("complete", done), key=job_id.encode()
            )
            events = await sse_events(client, f"/stream/{job_id}")
            status = (await client.get(f"/jobs/{job_id}")).json()
            results = await client.get(f"/jobs/{job_id}/results")
    finally:
        await producer.stop()
    assert running_status["status"] == "processing" and running_status["completed"] == 20
    assert events[-1][1]["event"] == "complete"
    assert (status["status"], status["completed"], status["missing_results"]) == ("incomplete", 20, 20)
    assert results.headers["texteval-missing-results"] == "20"
    assert "incomplete.csv" in results.headers["content-disposition"]
    assert len(results.text.strip().splitlines()) == 1 + 20


async def test_a_post_under_an_id_the_consumers_remember_but_the_gateway_forgot_is_refused(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    """Issue 28, finding 3, against the real broker, consumer and gateway: once a gateway has
    forgotten a job (here evicted: GATEWAY_MAX_JOBS=1) that the consumer still remembers, a POST
    under its id was `200 queued` and never graded. The gateway reads the job-state topic's keys."""
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs, GATEWAY_MAX_JOBS="1")
    await make_topics(settings)
    s = settings
    async with running(settings, FakeEngine(delay_s=0.01)):
        await produce(s.kafka.bootstrap_servers, s.kafka.requests_topic, [(b"old/1", job("old/1", items(3)))])
        await read_until(s.kafka.bootstrap_servers, s.kafka.progress_topic,
                         lambda rs: any(v["event"] == "complete" for v in values(rs)))  # fmt: skip
        async with gateway_serving(settings) as (_, base), httpx.AsyncClient(base_url=base) as client:
            known = await client.get("/jobs/old/1")
            fresh = await client.post("/evaluate", json={"job_id": "new/1", "items": items(2)})  # evicts old/1
            forgotten = await client.get("/jobs/old/1")
            other_items = await client.post("/evaluate", json={"job_id": "old/1", "items": items(2)})
            same_items = await client.post("/evaluate", json={"job_id": "old/1", "items": items(3)})
            again = await client.post("/evaluate", json={"job_id": "new/1", "items": items(2)})
    assert known.status_code == 200 and fresh.status_code == 200 and forgotten.status_code == 404
    assert other_items.status_code == same_items.status_code == 409
    assert "send a new job_id" in other_items.json()["detail"]
    assert again.status_code == 200  # its own job: idempotent as before
