"""Engine faults through the whole consumer: typed errors, timeouts, and death without loss."""

from __future__ import annotations

import asyncio

import pytest

from consumer.contract import Item
from consumer.engine.fake import FakeEngine, deterministic_script
from consumer.engine.output import Generation
from consumer.testing.topics import (
    at_least,
    committed,
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


def flaky(item: Item, attempt: int) -> Generation:
    if item.id_alumno.endswith("3"):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return deterministic_script(item, attempt)


async def test_items_the_engine_raises_on_become_engine_error_results(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    async with running(settings, FakeEngine(script=flaky)):
        await produce(kafka_bootstrap, topic_names.requests, [(b"k", job("flaky", items(20)))])
        results = values(await read_until(kafka_bootstrap, topic_names.results, at_least(20)))
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1)))
    failed = {r["item_index"] for r in results if r["status"] == "error"}
    assert failed == {3, 13}
    assert all(r["error"]["code"] == "engine_error" and r["nota"] is None for r in results if r["status"] == "error")
    assert (progress[-1]["data"]["succeeded"], progress[-1]["data"]["failed"]) == (18, 2)


async def test_a_hung_engine_gives_engine_timeout_results_and_the_job_completes(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    hung = FakeEngine(delay_s=3600, timeout_s=0.5)
    async with running(settings, hung):
        await produce(kafka_bootstrap, topic_names.requests, [(b"k", job("hung", items(5)))])
        results = values(await read_until(kafka_bootstrap, topic_names.results, at_least(5)))
        await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1))
    assert {r["error"]["code"] for r in results} == {"engine_timeout"}
    assert all(r["nota"] is None for r in results)
    assert hung.in_flight == 0  # the hung generations were abandoned


async def test_engine_death_publishes_no_errors_stops_and_a_restart_loses_nothing(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    dying = FakeEngine(delay_s=0.05, max_concurrency=10)
    async with running(settings, dying, partitions=1) as app:
        await produce(kafka_bootstrap, topic_names.requests, [(b"k", job("d", items(200)))])
        await read_until(kafka_bootstrap, topic_names.progress, count_events("batch_complete", 2))
        dying.kill("EngineCore died")
        assert not app.health_report().ready
        assert any("EngineCore died" in reason for reason in app.health_report().reasons)
        await asyncio.wait_for(app.wait_stopped(), 30)
        assert app.engine_failed
    before = values(await read_until(kafka_bootstrap, topic_names.results, at_least(1)))
    assert all(r["status"] == "ok" for r in before)  # death was not published as errors
    assert len(before) < 200
    assert (await committed(kafka_bootstrap, settings.kafka.group_id, topic_names.requests, 1))[0] is None

    # The orchestrator restarts the service: the job resumes from its
    # checkpointed items (job state), graded items are not graded again.
    restarted = FakeEngine()
    async with running(settings, restarted, partitions=1) as app:
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1)))
        results = values(await read_until(kafka_bootstrap, topic_names.results, at_least(200)))
        assert await committed_to_end(kafka_bootstrap, settings.kafka.group_id, topic_names.requests)
    assert {r["result_id"] for r in results} == {f"d#{i}" for i in range(200)}  # 0 lost
    assert progress[-1]["data"]["succeeded"] == 200
    resumed = progress[-1 - next(i for i, e in enumerate(reversed(progress)) if e["event"] == "accepted")]
    assert restarted.calls == 200 - (resumed["data"].get("resumed_items") or 0)
    duplicates = len(results) - 200
    assert duplicates <= len(before)  # at most what was published before the death
