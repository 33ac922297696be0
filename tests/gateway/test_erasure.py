"""Erasure of a job (contract 1.2) against the real broker: the gateway in
process (``gateway_serving``) and a consumer with the fake engine, as in
test_gateway.py. After an erase no gateway route gives anything of the job
(also a gateway started afterwards, which replays the progress topic that
still holds the job's events), its job-state record is a tombstone, and a
re-sent request is not graded; another tenant's commands change nothing.
The route's answer and audit line, and the job store's erase marks, also as
units (the gateway double)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from consumer.engine.fake import FakeEngine
from consumer.gateway.jobs import JobStore
from consumer.gateway.server import gateway_serving
from consumer.metrics import Metrics
from consumer.settings import Settings
from consumer.testing.topics import (
    Record,
    create_topics,
    items,
    job,
    produce,
    read_all,
    read_until,
    running,
    values,
    wait_for,
)
from tests.gateway.gateway_double import EVENT, KEY_A, KEY_ADMIN, KEY_B, TWO_TENANTS, accepted, bearer, harness, item
from tests.gateway.test_gateway import sse_events
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames


@pytest.fixture
async def settings(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> AsyncIterator[Settings]:
    built = settings_for(BATCH_SIZE=5, **TWO_TENANTS)
    await create_topics(kafka_bootstrap, built.service_topics())
    yield built


def last_value_of(records: list[Record], key: bytes) -> tuple[bool, bytes | None]:
    """(whether ``key`` has a record, the value of its last one): what compaction keeps."""
    mine = [r for r in records if r.key == key]
    return bool(mine), mine[-1].value if mine else None


async def nothing_readable(base: str, job_id: str) -> dict[str, Any]:
    """What every gateway route gives of ``job_id`` to its owner and to an operator."""
    seen: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for who, key in (("owner", KEY_A), ("admin", KEY_ADMIN)):
            client.headers.update(bearer(key))
            seen[f"{who} status"] = (await client.get(f"/jobs/{job_id}")).status_code
            seen[f"{who} csv"] = (await client.get(f"/jobs/{job_id}/results")).status_code
            seen[f"{who} jsonl"] = (await client.get(f"/jobs/{job_id}/results", params={"format": "jsonl"})).status_code
            seen[f"{who} token"] = (await client.post(f"/jobs/{job_id}/stream_token")).status_code
            seen[f"{who} listed"] = [
                j["job_id"] for j in (await client.get("/jobs")).json()["jobs"] if j["job_id"] == job_id
            ]
            seen[f"{who} stream"] = [e for _, e in await sse_events(client, f"/stream/{job_id}")]
    return seen


NOTHING = {
    **{f"{who} {route}": 404 for who in ("owner", "admin") for route in ("status", "csv", "jsonl", "token")},
    **{f"{who} listed": [] for who in ("owner", "admin")},
    **{f"{who} stream": [{"error": "Job not found"}] for who in ("owner", "admin")},
}


async def test_an_erased_job_is_gone_from_every_gateway_its_state_is_a_tombstone_and_a_resend_is_not_graded(
    settings: Settings,
) -> None:
    bootstrap, n = settings.kafka.bootstrap_servers, 12
    async with running(settings, FakeEngine(delay_s=0.01)), gateway_serving(settings) as (_, base):
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=bearer(KEY_A)) as client:
            posted = (await client.post("/evaluate", json={"job_id": "class-3", "items": items(n)})).json()
            job_id = posted["job_id"]
            events = [e["event"] for _, e in await sse_events(client, posted["stream_url"])]
            before = (await client.get(f"/jobs/{job_id}/results", params={"format": "jsonl"})).text.splitlines()
            foreign = await client.delete(f"/jobs/{job_id}", params={"erase": "true"}, headers=bearer(KEY_B))
            erased_at = datetime.now().timestamp()
            answer = await client.delete(f"/jobs/{job_id}", params={"erase": "true"})
            again = await client.post("/evaluate", json={"job_id": "class-3", "items": items(n)})
        after_here = await nothing_readable(base, job_id)
        # The owner of the job's partition writes the tombstone with its next commit.
        state = await read_until(bootstrap, settings.kafka.checkpoints_topic,
                                 lambda rs: last_value_of(rs, job_id.encode()) == (True, None))  # fmt: skip
        # The progress topic still holds the job's events (retention removes them)...
        progress = [
            v for v in values(await read_all(bootstrap, settings.kafka.progress_topic)) if v["job_id"] == job_id
        ]
        # ... yet a gateway started now, which replays it, never learns the job.
        async with gateway_serving(settings) as (_, later):
            after_later = await nothing_readable(later, job_id)
            # The same request again, straight to Kafka: answered `cancelled`, never graded.
            await produce(bootstrap, settings.kafka.requests_topic, [(job_id.encode(), job(job_id, items(n)))])
            resent = await read_until(bootstrap, settings.kafka.progress_topic, lambda rs: sum(
                1 for v in values(rs) if v["job_id"] == job_id and v["event"] == "cancelled") >= 1)  # fmt: skip
            after_resend = await nothing_readable(later, job_id)
        results = [v for v in values(await read_all(bootstrap, settings.kafka.results_topic)) if v["job_id"] == job_id]
        state_after = await read_all(bootstrap, settings.kafka.checkpoints_topic)

    assert events[0] == "accepted" and events[-1] == "complete" and len(before) == n
    assert foreign.status_code == 404  # another tenant's job is unknown, as on every route
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["job_id"] == job_id and body["status"] == "erase_requested"
    assert [p["place"] for p in body["erased_now"]] == [
        "gateway memory", settings.kafka.checkpoints_topic, settings.kafka.shadow_checkpoints_topic,
    ]  # fmt: skip
    kept = {p["place"]: p for p in body["kept_until_retention"]}
    assert {
        settings.kafka.requests_topic,
        settings.kafka.results_topic,
        settings.kafka.progress_topic,
        settings.kafka.dlt_topic,
    } <= set(kept)
    for place in kept.values():  # until when: after now + retention, within it + 10%
        gone_by = datetime.fromisoformat(place["gone_by"]).timestamp()
        assert place["retention_s"] <= gone_by - erased_at <= 1.1 * place["retention_s"] + 60, place
    assert kept[settings.kafka.results_topic]["retention_s"] > kept[settings.kafka.progress_topic]["retention_s"]
    assert again.status_code == 409  # the id cannot be reused while the consumers refuse it
    assert after_here == NOTHING and after_later == NOTHING and after_resend == NOTHING
    assert last_value_of(state, job_id.encode()) == (True, None)
    assert [e["event"] for e in progress][-1] == "complete"  # what the later gateway replayed
    cancelled = [v for v in values(resent) if v["job_id"] == job_id and v["event"] == "cancelled"]
    assert cancelled[-1]["data"]["completed"] == 0
    # Not graded again: the results are the first run's only, one per item.
    assert sorted(r["item_index"] for r in results) == list(range(n))
    # And no job-state record of it was written again: its last record is still the tombstone.
    assert last_value_of(state_after, job_id.encode()) == (True, None)


async def test_another_tenants_erase_or_cancel_is_a_no_op_for_the_consumer_and_the_gateways(
    settings: Settings,
) -> None:
    bootstrap, metrics, n = settings.kafka.bootstrap_servers, Metrics(), 40
    running_id, future_id = "school-a/running", "school-a/future"

    def command(action: str, job_id: str, **who: Any) -> tuple[bytes, bytes]:
        return job_id.encode(), json.dumps({"schema_version": 1, "action": action, "job_id": job_id, **who}).encode()

    async with (
        running(settings, FakeEngine(delay_s=0.05, max_concurrency=1), metrics),
        gateway_serving(settings) as (_, base),
    ):
        # A pre-cancel and a pre-erase of school-a's next id, by school-b (and a 1.1 command naming no one).
        await produce(bootstrap, settings.kafka.control_topic, [
            command("cancel", future_id, tenant="school-b"), command("erase", future_id, tenant="school-b"),
            command("erase", future_id),
        ])  # fmt: skip
        await produce(bootstrap, settings.kafka.requests_topic, [(running_id.encode(), job(running_id, items(n)))])
        await read_until(bootstrap, settings.kafka.results_topic, lambda rs: len(rs) >= 3)
        await produce(bootstrap, settings.kafka.control_topic, [
            command("erase", running_id, tenant="school-b"), command("cancel", running_id, tenant="school-b"),
        ])  # fmt: skip
        await wait_for(lambda: metrics.registry.get_sample_value(
            "texteval_control_commands_total", {"result": "foreign"}) == 5)  # fmt: skip
        await produce(bootstrap, settings.kafka.requests_topic, [(future_id.encode(), job(future_id, items(3)))])
        done = await read_until(bootstrap, settings.kafka.progress_topic, lambda rs: sum(
            1 for v in values(rs) if v["event"] in ("complete", "cancelled")) >= 2, timeout_s=120)  # fmt: skip
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=bearer(KEY_A)) as client:
            statuses = {j: (await client.get(f"/jobs/{j}")).json().get("status") for j in (running_id, future_id)}
        state = await read_all(bootstrap, settings.kafka.checkpoints_topic)

    terminal = {v["job_id"]: v for v in values(done) if v["event"] in ("complete", "cancelled")}
    assert terminal[running_id]["event"] == "complete" and terminal[running_id]["data"]["total_processed"] == n
    assert terminal[future_id]["event"] == "complete"
    for kind in ("cancel", "erase"):
        assert metrics.registry.get_sample_value("texteval_control_commands_total", {"result": kind}) == 0
    assert statuses == {running_id: "completed", future_id: "completed"}  # no gateway dropped them
    for job_id in (running_id, future_id):
        found, last = last_value_of(state, job_id.encode())
        assert found and last is not None and json.loads(last)["phase"] == "completed"


async def test_an_erase_reaches_a_running_job_and_another_running_gateway(settings: Settings) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    async with (
        running(settings, FakeEngine(delay_s=0.05, max_concurrency=1)),
        gateway_serving(settings) as (_, first),
        gateway_serving(settings) as (other_gateway, second),
        httpx.AsyncClient(base_url=first, timeout=30, headers=bearer(KEY_ADMIN)) as client,
    ):
        posted = (await client.post("/evaluate", json={"job_id": "plain-long", "items": items(300)})).json()
        await sse_events(client, posted["stream_url"], limit=3)
        await wait_for(lambda: other_gateway.store.get("plain-long") is not None)
        answer = await client.delete("/jobs/plain-long", params={"erase": "true"})
        # The other replica drops it when it reads the command (no wall clock: until it has).
        await wait_for(lambda: other_gateway.store.get("plain-long") is None)
        cancelled = await read_until(bootstrap, settings.kafka.progress_topic, lambda rs: any(
            v["event"] == "cancelled" for v in values(rs)), timeout_s=60)  # fmt: skip
        async with httpx.AsyncClient(base_url=second, timeout=30, headers=bearer(KEY_ADMIN)) as other:
            status = (await other.get("/jobs/plain-long")).status_code
        await asyncio.sleep(0)
    assert answer.status_code == 202
    graded = [v for v in values(cancelled) if v["event"] == "cancelled"][-1]["data"]["completed"]
    assert graded < 300  # stopped, as a cancel
    assert status == 404


def test_the_job_store_forgets_an_erased_job_ignores_its_later_events_and_its_mark_expires() -> None:
    store = JobStore(ttl_s=3600, max_jobs=100, max_bytes=10**8, erased_ttl_s=86400)

    def feed(message: dict[str, Any], offset: int, at_s: float) -> object:
        raw = json.dumps({"schema_version": 1, **message})
        return store.apply(EVENT.validate_json(raw), raw, offset=offset, timestamp_ms=int(at_s * 1000))

    feed(accepted("school-a/j", 2), 1, 1000.0)
    record = store.get("school-a/j")
    assert record is not None and store.bytes_kept > 0
    assert store.erase("school-a/j", 1001.0) and record.dropped and store.get("school-a/j") is None
    assert store.bytes_kept == 0 and store.is_erased("school-a/j")
    assert feed(accepted("school-a/j", 2), 2, 1002.0) is None and store.get("school-a/j") is None
    assert not store.erase("school-a/other", 1003.0)  # not in memory: only marked
    store.expire(1001.0 + 86400 + 1)  # the mark lives as long as the consumers refuse the id
    assert not store.is_erased("school-a/j")
    assert feed(accepted("school-a/j", 2), 3, 1001.0 + 86400 + 2) is not None


def test_the_erase_route_names_its_sender_audits_it_and_refuses_the_erased_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consumer.gateway.audit")
    h = harness(**TWO_TENANTS)
    h.client.post("/evaluate", json={"job_id": "j", "items": [item()]}, headers=bearer(KEY_A))
    h.feed(accepted("school-a/j", 1))
    foreign = h.client.delete("/jobs/school-a/j", params={"erase": "true"}, headers=bearer(KEY_B))
    owner = h.client.delete("/jobs/school-a/j", params={"erase": "true"}, headers=bearer(KEY_A))
    operator = h.client.delete("/jobs/school-b/never-seen", params={"erase": "true"}, headers=bearer(KEY_ADMIN))
    reuse = h.client.post("/evaluate", json={"job_id": "j", "items": [item()]}, headers=bearer(KEY_A))
    assert foreign.status_code == 404 and owner.status_code == 202 and operator.status_code == 202
    assert reuse.status_code == 409 and "erased" in reuse.json()["detail"]
    assert h.client.get("/jobs/school-a/j", headers=bearer(KEY_A)).status_code == 404
    assert [c for c in h.sent(h.gateway.settings.kafka.control_topic) if c["action"] == "erase"] == [
        {"schema_version": 1, "action": "erase", "job_id": "school-a/j", "tenant": "school-a"},
        {"schema_version": 1, "action": "erase", "job_id": "school-b/never-seen", "admin": True},
    ]
    lines = [
        r.getMessage() for r in caplog.records if r.name == "consumer.gateway.audit" and "DELETE" in r.getMessage()
    ]
    assert len(lines) == 3 and all(line.endswith("erase=true") for line in lines), lines


def test_the_erase_answer_says_the_decision_records_stay_and_the_teachers_loop_skips_the_job() -> None:
    h = harness(**TWO_TENANTS)
    answer = h.client.delete("/jobs/school-a/j", params={"erase": "true"}, headers=bearer(KEY_A)).json()
    settings = h.gateway.settings
    (kept,) = answer["records_kept"]
    assert (
        kept["place"] == settings.kafka.decisions_topic
        and kept["retention_s"] * 1000 == settings.privacy.decisions_retention_ms
    )
    assert "no text" in kept["holds"] and "no id_alumno" in kept["holds"]
    assert "agreement" in answer["teachers_loop"] and "export-training" in answer["teachers_loop"]


def test_the_erase_route_writes_the_erased_decision_record() -> None:
    h = harness(**TWO_TENANTS)
    assert h.client.delete("/jobs/school-a/j", params={"erase": "true"}, headers=bearer(KEY_A)).status_code == 202
    (record,) = h.sent(h.gateway.settings.kafka.decisions_topic)
    assert (record["record"], record["job_id"], record["tenant"]) == ("erased", "school-a/j", "school-a")
