"""Contract 1.3 at POST /jobs/{job_id}/corrections: a corrected_at in the future is refused
with its field path, and every accepted correction leaves a decision record on the decisions
topic: the grade before it as the gateway knows it (the model's, then the last correction it
applied), who (the tenant and the key's id, never the key; "anonymous" on an open gateway), no
feedback or comment. Against the real broker, a real consumer (fake engine) grading the job."""

from __future__ import annotations

import csv
import gc
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from consumer.corrections import Correction
from consumer.engine.fake import FakeEngine
from consumer.gateway.auth import digest, key_id_of
from consumer.gateway.corrections import AppliedGrades, decision_records
from consumer.gateway.jobs import GatewayJobStatus, JobRecord
from consumer.gateway.server import gateway_serving
from consumer.settings import Settings
from consumer.testing.topics import at_least, create_topics, items, make_settings, read_until, running, wait_for
from tests.kafka_harness import TopicNames

KEY = "key-school-1-" + "a" * 32
SECRET = "Ho va escriure la Laia Vidal, 2n B"  # stands for a minor's text quoted by a teacher
NOW = datetime(2026, 12, 2, 10, tzinfo=UTC)


def settings_with(kafka_bootstrap: str, topic_names: TopicNames, group: dict[str, int], **extra: Any) -> Settings:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    return make_settings(
        kafka_bootstrap, topic_names, group,
        KAFKA_CORRECTIONS_TOPIC=f"{prefix}.evaluation.corrections",
        KAFKA_DECISIONS_TOPIC=f"{prefix}.evaluation.decisions", **extra,
    )  # fmt: skip


def corrections_of(records: list[Any]) -> list[dict[str, Any]]:
    values = [json.loads(r.value) for r in records if r.value]
    return [v for v in values if v["record"] == "correction"]


def test_each_record_names_the_grade_before_it_in_the_order_applied() -> None:
    def c(index: int, nota: int) -> Correction:
        return Correction(job_id="s/j", item_index=index, nota=nota, corrected_at=NOW)

    applied: dict[int, Correction] = {}
    records = decision_records([c(0, 1), c(0, 2), c(1, 5), c(2, 0)], {0: 4, 1: None}, applied, "s:0123456789")
    # Item 0: the model's 4, then the first correction's 1; item 1 was an error result; item 2 unknown.
    assert [(r.item_index, r.previous_nota, r.nota) for r in records] == [(0, 4, 1), (0, 1, 2), (1, None, 5),
                                                                          (2, None, 0)]  # fmt: skip
    assert {i: c.nota for i, c in applied.items()} == {0: 2, 1: 5, 2: 0} and {r.by for r in records} == {"s:0123456789"}
    # The next list starts from what was applied.
    (after,) = decision_records([c(0, 3)], {0: 4}, applied, "s:0123456789")
    assert after.previous_nota == 2


def test_applied_grades_live_as_long_as_the_gateway_holds_the_job() -> None:
    grades = AppliedGrades()
    record = JobRecord("s/j", GatewayJobStatus.COMPLETED, 0.0)
    correction = Correction(job_id="s/j", item_index=0, nota=3, corrected_at=NOW)
    grades.of(record)[0] = correction
    assert grades.of(record) == {0: correction} and len(grades) == 1
    # The same id met again (a new record: the job was dropped and re-learnt) starts empty.
    assert grades.of(JobRecord("s/j", GatewayJobStatus.COMPLETED, 0.0)) == {}
    del record
    gc.collect()
    assert len(grades) == 0


@pytest.mark.kafka
async def test_accepted_corrections_leave_records_with_the_grade_before_and_who(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = settings_with(kafka_bootstrap, topic_names, kafka_group_kwargs, GATEWAY_API_KEYS=f"school-1={KEY}")
    await create_topics(kafka_bootstrap, settings.service_topics())
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        running(settings, FakeEngine()),
        gateway_serving(settings) as (gateway, base),
        httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as client,
    ):
        answer = await client.post("/evaluate", json={"items": items(3)})
        assert answer.status_code == 200, answer.text
        job_id = answer.json()["job_id"]
        record = gateway.store.get(job_id)
        assert record is not None
        await wait_for(lambda: record.finished)
        rows = list(csv.DictReader(io.StringIO((await client.get(f"/jobs/{job_id}/results")).text)))
        model = {int(r["item_index"]): int(r["nota"]) for r in rows}
        url = f"/jobs/{job_id}/corrections"
        # A corrected_at more than a minute ahead: 422 with its path, like any invalid entry; nothing produced.
        ahead = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        refused = await client.post(url, json=[{"item_index": 1, "nota": 2}, {"item_index": 0, "nota": 1,
                                                                               "corrected_at": ahead}])  # fmt: skip
        assert refused.status_code == 422
        (error,) = refused.json()["detail"]
        assert error == {"loc": ["body", 1, "corrected_at"], "msg": "lies more than a minute in the future",
                         "type": "value_error"}  # fmt: skip
        first = [{"item_index": 0, "nota": (model[0] + 1) % 6, "feedback": SECRET, "comment": SECRET},
                 {"item_index": 0, "nota": (model[0] + 2) % 6, "corrected_at": "2026-12-02T10:00:00Z"}]  # fmt: skip
        # One correction per item per request (issue 28): the same item twice is refused whole.
        twice = await client.post(url, json=first)
        assert twice.status_code == 422 and twice.json()["detail"][0]["loc"] == ["body", 1, "item_index"]
        for entry in first:
            assert (await client.post(url, json=[entry])).status_code == 202
        second = [{"item_index": 0, "nota": (model[0] + 3) % 6}, {"item_index": 2, "nota": (model[2] + 1) % 6}]
        assert (await client.post(url, json=second)).status_code == 202

    produced = await read_until(
        kafka_bootstrap, settings.kafka.decisions_topic, lambda rs: len(corrections_of(rs)) >= 4
    )
    records = corrections_of(produced)
    assert [(v["item_index"], v["previous_nota"], v["nota"]) for v in records] == [
        (0, model[0], (model[0] + 1) % 6),
        (0, (model[0] + 1) % 6, (model[0] + 2) % 6),
        (0, (model[0] + 2) % 6, (model[0] + 3) % 6),
        (2, model[2], (model[2] + 1) % 6),
    ]
    assert {v["by"] for v in records} == {f"school-1:{key_id_of(digest(KEY))}"}
    assert all(v["job_id"] == job_id and v["tenant"] == "school-1" for v in records)
    assert records[1]["corrected_at"] == "2026-12-02T10:00:00Z" and all(v["applied_at"] for v in records)
    assert {r.key for r in produced} == {job_id.encode()}
    shown = json.dumps(records)
    assert KEY not in shown and SECRET not in shown  # neither the key nor the feedback or comment
    # The corrections themselves went out as before, the refused list's not at all.
    written = await read_until(kafka_bootstrap, settings.kafka.corrections_topic, at_least(4))
    assert [json.loads(r.value)["item_index"] for r in written if r.value] == [0, 0, 0, 2]


@pytest.mark.kafka
async def test_an_open_gateway_records_an_anonymous_correction(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = settings_with(kafka_bootstrap, topic_names, kafka_group_kwargs)
    await create_topics(kafka_bootstrap, settings.service_topics())
    async with gateway_serving(settings) as (_, base), httpx.AsyncClient(base_url=base, timeout=30) as client:
        answer = await client.post("/evaluate", json={"items": items(2)})
        job_id = answer.json()["job_id"]
        assert (
            await client.post(f"/jobs/{job_id}/corrections", json=[{"item_index": 1, "nota": 3}])
        ).status_code == 202
    (record,) = corrections_of(await read_until(kafka_bootstrap, settings.kafka.decisions_topic, at_least(1)))
    # No consumer graded the job: the gateway knows no grade before this one.
    assert (record["by"], record["previous_nota"], record["nota"], record["tenant"]) == ("anonymous", None, 3, None)
