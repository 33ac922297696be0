"""Teachers' corrections against the model's grades, counted by the gateway
(texteval_gateway_corrections_total{agreement}): a real consumer (fake
engine) grades a job on a real broker, the gateway follows it, a teacher
corrects through POST /jobs/{job_id}/corrections."""

from __future__ import annotations

import csv
import io
import uuid

import httpx
import pytest

from consumer.engine.fake import FakeEngine
from consumer.gateway.corrections import Agreement, agreement_of
from consumer.gateway.metrics import GatewayMetrics
from consumer.gateway.server import gateway_serving
from consumer.testing.topics import create_topics, items, make_settings, running, wait_for
from tests.kafka_harness import TopicNames

KEY = "key-school-1-" + "a" * 32


def test_agreement_of_a_teachers_grade_with_the_models() -> None:
    assert agreement_of(3, 3) is Agreement.EXACT
    assert agreement_of(3, 2) is agreement_of(3, 4) is agreement_of(0, 1) is Agreement.WITHIN_ONE
    assert agreement_of(3, 1) is agreement_of(0, 5) is agreement_of(5, 3) is Agreement.OFF
    assert agreement_of(None, 3) is Agreement.UNKNOWN


def test_every_agreement_series_exists_at_zero_from_the_start() -> None:
    metrics = GatewayMetrics()
    for agreement in Agreement:
        assert metrics.registry.get_sample_value("texteval_gateway_corrections_total", {"agreement": agreement}) == 0


def counts(metrics: GatewayMetrics) -> dict[str, float | None]:
    return {
        a.value: metrics.registry.get_sample_value("texteval_gateway_corrections_total", {"agreement": a.value})
        for a in Agreement
    }


def near(nota: int, distance: int) -> int:
    """A grade ``distance`` away from ``nota`` on the 0..5 scale."""
    return nota + distance if nota + distance <= 5 else nota - distance


@pytest.mark.kafka
async def test_accepted_corrections_are_counted_by_agreement_with_the_models_grade(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = make_settings(
        kafka_bootstrap, topic_names, kafka_group_kwargs,
        KAFKA_CORRECTIONS_TOPIC=f"t-{uuid.uuid4().hex[:8]}.evaluation.corrections",
        GATEWAY_API_KEYS=f"school-1={KEY}",
    )  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    graded = items(5)
    graded[4]["respuesta"] = "paraula " * 2400  # past the fake engine's context: an error result, no grade
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        running(settings, FakeEngine()),
        gateway_serving(settings) as (gateway, base),
        httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as client,
    ):
        answer = await client.post("/evaluate", json={"items": graded})
        assert answer.status_code == 200, answer.text
        job_id = answer.json()["job_id"]
        record = gateway.store.get(job_id)
        assert record is not None
        await wait_for(lambda: record.finished)
        rows = list(csv.DictReader(io.StringIO((await client.get(f"/jobs/{job_id}/results")).text)))
        model = {int(r["item_index"]): int(r["nota"]) for r in rows if r["status"] == "ok"}
        assert sorted(model) == [0, 1, 2, 3]  # item 4 is the error result
        url = f"/jobs/{job_id}/corrections"
        # A refused list counts nothing.
        assert (await client.post(url, json=[{"item_index": 0, "nota": 9}])).status_code == 422
        assert counts(gateway.metrics) == {"exact": 0, "within_one": 0, "off": 0, "unknown": 0}
        body = [
            {"item_index": 0, "nota": model[0]},  # the teacher confirms the grade
            {"item_index": 1, "nota": near(model[1], 1)},
            {"item_index": 2, "nota": near(model[2], 2)},
            {"item_index": 3, "nota": near(model[3], 3)},
            {"item_index": 4, "nota": 2},  # graded by the teacher only: the model gave an error
        ]
        assert (await client.post(url, json=body)).status_code == 202
        assert counts(gateway.metrics) == {"exact": 1, "within_one": 1, "off": 2, "unknown": 1}
        # Each accepted correction counts, a second one of the same item too.
        assert (await client.post(url, json=[{"item_index": 0, "nota": near(model[0], 1)}])).status_code == 202
        assert counts(gateway.metrics) == {"exact": 1, "within_one": 2, "off": 2, "unknown": 1}
        scraped = (await client.get("/metrics")).text
        assert 'texteval_gateway_corrections_total{agreement="off"} 2.0' in scraped
