"""POST /jobs/{job_id}/corrections against a real broker: the job's tenant only, 422 with field paths."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from consumer.gateway.corrections import parse_corrections
from consumer.gateway.server import gateway_serving
from consumer.settings import Settings
from consumer.testing.topics import at_least, create_topics, items, make_settings, read_until
from tests.kafka_harness import TopicNames

SECRET = "Ho va escriure la Laia Vidal, 2n B"  # stands for a minor's text quoted by a teacher
# Keys of the length the gateway demands (32+ characters).
KEYS = {"school-1": "key-school-1-" + "a" * 32, "school-2": "key-school-2-" + "b" * 32}
ADMIN = "key-admin-" + "c" * 32


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def gateway(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> AsyncIterator[tuple[Settings, httpx.AsyncClient]]:
    settings = make_settings(
        kafka_bootstrap, topic_names, kafka_group_kwargs,
        KAFKA_CORRECTIONS_TOPIC=f"t-{uuid.uuid4().hex[:8]}.evaluation.corrections",
        GATEWAY_API_KEYS=",".join(f"{tenant}={key}" for tenant, key in KEYS.items()),
        GATEWAY_ADMIN_KEYS=ADMIN,
    )  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    async with gateway_serving(settings) as (_, base), httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield settings, client


async def submitted_job(client: httpx.AsyncClient, n_items: int) -> str:
    answer = await client.post("/evaluate", json={"items": items(n_items)}, headers=bearer(KEYS["school-1"]))
    assert answer.status_code == 200, answer.text
    job_id: str = answer.json()["job_id"]
    assert job_id.startswith("school-1/")
    return job_id


async def test_the_jobs_tenant_corrects_and_the_corrections_are_produced_keyed_by_job(
    gateway: tuple[Settings, httpx.AsyncClient],
) -> None:
    settings, client = gateway
    job_id = await submitted_job(client, 4)
    body = [
        {"item_index": 0, "nota": 3, "feedback": "Cal explicar la clorofil·la.", "comment": "revisat"},
        {"item_index": 2, "nota": 5, "corrected_at": "2026-12-02T10:00:00Z"},
    ]
    answer = await client.post(f"/jobs/{job_id}/corrections", json=body, headers=bearer(KEYS["school-1"]))
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"job_id": job_id, "accepted": 2}
    records = await read_until(settings.kafka.bootstrap_servers, settings.kafka.corrections_topic, at_least(2))
    assert [r.key for r in records] == [job_id.encode()] * 2
    produced = sorted((json.loads(r.value) for r in records if r.value), key=lambda v: v["item_index"])
    assert [(v["job_id"], v["item_index"], v["nota"]) for v in produced] == [(job_id, 0, 3), (job_id, 2, 5)]
    assert produced[0]["feedback"] == "Cal explicar la clorofil·la." and produced[0]["corrected_at"]
    assert produced[1]["corrected_at"] == "2026-12-02T10:00:00Z" and produced[1]["feedback"] is None


async def test_other_tenants_operators_and_strangers_cannot_correct(
    gateway: tuple[Settings, httpx.AsyncClient],
) -> None:
    settings, client = gateway
    job_id = await submitted_job(client, 2)
    body = [{"item_index": 0, "nota": 1}]
    url = f"/jobs/{job_id}/corrections"
    other = await client.post(url, json=body, headers=bearer(KEYS["school-2"]))
    unknown = await client.post("/jobs/school-1/no-such-job/corrections", json=body, headers=bearer(KEYS["school-1"]))
    # Another tenant's job is exactly an unknown one.
    assert (
        (other.status_code, other.json()) == (unknown.status_code, unknown.json()) == (404, {"detail": "Job not found"})
    )
    assert (await client.post(url, json=body, headers=bearer(ADMIN))).status_code == 403
    assert (await client.post(url, json=body)).status_code == 401
    assert (await client.post(url, json=body, headers=bearer("not-a-key"))).status_code == 401
    # The tenant's own correction goes through, and it is the only one on the topic.
    assert (await client.post(url, json=body, headers=bearer(KEYS["school-1"]))).status_code == 202
    records = await read_until(settings.kafka.bootstrap_servers, settings.kafka.corrections_topic, at_least(1))
    assert len(records) == 1


async def test_bad_bodies_get_422_with_field_paths_and_nothing_is_produced(
    gateway: tuple[Settings, httpx.AsyncClient],
) -> None:
    settings, client = gateway
    job_id = await submitted_job(client, 3)
    url, headers = f"/jobs/{job_id}/corrections", bearer(KEYS["school-1"])
    bad = [
        {"item_index": 0, "nota": 2, "feedback": SECRET},  # fine by itself
        {"item_index": 1, "nota": 9, "feedback": SECRET},
        {"item_index": 3, "nota": 2},  # the job has 3 items
        {"item_index": 2, "nota": 2, "job_id": "school-2/theirs"},
        {"item_index": 2, "nota": True},
    ]
    answer = await client.post(url, json=bad, headers=headers)
    assert answer.status_code == 422
    assert [e["loc"] for e in answer.json()["detail"]] == [
        ["body", 1, "nota"], ["body", 2, "item_index"], ["body", 3, "job_id"], ["body", 4, "nota"]
    ]  # fmt: skip
    assert SECRET not in answer.text
    for body in (b"{not json", b"[]", b'{"item_index": 0, "nota": 1}'):
        refused = await client.post(url, content=body, headers={**headers, "Content-Type": "application/json"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body"]
    # Nothing of the refused lists was produced: the next valid correction is the topic's first record.
    assert (await client.post(url, json=[{"item_index": 2, "nota": 4}], headers=headers)).status_code == 202
    records = await read_until(settings.kafka.bootstrap_servers, settings.kafka.corrections_topic, at_least(1))
    assert [(json.loads(r.value)["item_index"], json.loads(r.value)["nota"]) for r in records if r.value] == [(2, 4)]


def test_parse_corrections_caps_the_list_and_shows_no_text() -> None:
    too_many = json.dumps([{"item_index": i, "nota": 1} for i in range(6)]).encode()
    errors: Any = parse_corrections(too_many, "s/j", max_items=50, total_items=10, max_entries=5)
    assert errors == [{"loc": ["body"], "msg": "at most 5 corrections per request", "type": "too_long"}]
    (ok,) = parse_corrections(b'[{"item_index": 4, "nota": 0}]', "s/j", max_items=50, total_items=5, max_entries=200)
    assert getattr(ok, "item_index", None) == 4


def test_each_correction_names_an_item_of_the_job_once_per_request() -> None:
    """Finding 7 of the second red team: five requests wrote 10,000 records for a 10-item job."""
    body = json.dumps([{"item_index": 1, "nota": 2}, {"item_index": 1, "nota": 3}, {"item_index": 10, "nota": 1}])
    errors: Any = parse_corrections(body.encode(), "s/j", max_items=2000, total_items=10, max_entries=200)
    assert [(e["loc"], e["type"]) for e in errors] == [
        (["body", 1, "item_index"], "duplicate"), (["body", 2, "item_index"], "less_than"),
    ]  # fmt: skip
    # A job whose size the gateway does not know yet takes no correction at all.
    unknown: Any = parse_corrections(
        b'[{"item_index": 0, "nota": 0}]', "s/j", max_items=2000, total_items=0, max_entries=200
    )
    assert unknown[0]["msg"] == "the job's size is not known yet"
    # JSON nested deeper than the parser goes is a 422's error, not a 500.
    deep: Any = parse_corrections(
        b"[" * 100_000 + b"]" * 100_000, "s/j", max_items=2000, total_items=10, max_entries=200
    )
    assert deep == [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]
