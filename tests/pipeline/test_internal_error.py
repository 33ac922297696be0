"""A bug in a job run is not an outage: that request is dead-lettered as
``internal_error`` and the consumer goes on grading (real broker, fake engine)."""

from __future__ import annotations

import dataclasses

import pytest

from consumer.contract import Item
from consumer.engine.base import GradeOutcome
from consumer.engine.fake import FakeEngine
from consumer.metrics import Metrics
from consumer.testing.topics import (
    committed_to_end,
    count_events,
    items,
    job,
    produce,
    read_until,
    running,
    values,
)
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames

pytestmark = pytest.mark.kafka

_TRIGGER = "Aquest text fa petar el consumidor."


class _OutOfContractEngine(FakeEngine):
    """Grades one text 9 of 5: the result message refuses it while the job runs
    (a stand-in for any bug between the engine and the sinks)."""

    async def grade(self, item: Item, request_id: str) -> GradeOutcome:
        outcome = await super().grade(item, request_id)
        return dataclasses.replace(outcome, nota=9) if item.respuesta.startswith(_TRIGGER) else outcome


async def test_a_bug_in_a_job_run_dead_letters_that_request_as_internal_error_and_the_next_job_is_graded(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    engine, metrics = _OutOfContractEngine(delay_s=0.001), Metrics()
    buggy = job("buggy", [*items(3), *items(1, prefix="B", text=_TRIGGER)])
    async with running(settings, engine, metrics) as app:
        assert metrics.registry.get_sample_value("texteval_internal_errors_total") == 0  # exported from the start
        await produce(kafka_bootstrap, topic_names.requests, [(b"buggy", buggy)])
        dlt = await read_until(kafka_bootstrap, topic_names.dlt, lambda rs: len(rs) >= 1)
        await produce(kafka_bootstrap, topic_names.requests, [(b"next", job("next", items(5)))])
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1)))
        assert await committed_to_end(kafka_bootstrap, settings.kafka.group_id, topic_names.requests)
        reasons = app.health_report().reasons
    headers = dict(dlt[0].headers)  # type: ignore[attr-defined]
    assert headers["texteval.error.reason"] == b"internal_error"
    assert headers["texteval.error.detail"] == b"ValidationError"  # the type only: never a message quoting data
    assert dlt[0].value == buggy  # type: ignore[attr-defined]
    assert [e["job_id"] for e in progress if e["event"] == "complete"] == ["next"]
    assert metrics.registry.get_sample_value("texteval_internal_errors_total") == 1
    assert metrics.registry.get_sample_value("texteval_dead_letters_total", {"reason": "internal_error"}) == 1
    assert not any("delivery" in r for r in reasons)  # a bug is not reported as an output outage
