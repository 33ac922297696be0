"""The work a consumer reports for autoscaling (texteval_items_waiting), and
labelled series that exist before their first event."""

from __future__ import annotations

import asyncio
import time

import pytest

from consumer.engine.fake import FakeEngine
from consumer.metrics import Metrics
from consumer.pipeline.intake import RejectReason
from consumer.testing.topics import count_events, items, job, produce, read_until, running
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames


def test_labelled_series_exist_at_zero_before_their_first_event() -> None:
    # A series born at 1 hides its first increase from rate()/increase().
    metrics = Metrics()
    metrics.expect(metrics.dead_letters, [RejectReason.INVALID_JSON])
    sample = metrics.registry.get_sample_value
    assert sample("texteval_items_graded_total", {"status": "ok", "error_code": ""}) == 0
    assert sample("texteval_items_graded_total", {"status": "error", "error_code": "input_too_long"}) == 0
    assert sample("texteval_dead_letters_total", {"reason": "invalid_json"}) == 0
    assert sample("texteval_items_waiting") == 0


@pytest.mark.kafka
async def test_items_waiting_counts_texts_in_flight_and_in_the_backlog(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    # One job at a time: the second waits, parsed, in the backlog.
    settings = settings_for(MAX_CONCURRENT_JOBS=1)
    metrics = Metrics()
    waiting: list[float] = []
    async with running(settings, FakeEngine(delay_s=0.5, max_concurrency=4), metrics) as app:
        assert metrics.registry.get_sample_value("texteval_dead_letters_total", {"reason": "invalid_json"}) == 0
        # Same key: same partition, in this order.
        await produce(
            kafka_bootstrap, topic_names.requests, [(b"k", job("big", items(40))), (b"k", job("next", items(30)))]
        )
        deadline = time.monotonic() + 30
        seen_work = False
        while not (seen_work and waiting[-1] == 0 and app.active_jobs == 0):
            assert time.monotonic() < deadline, waiting
            value = metrics.registry.get_sample_value("texteval_items_waiting")
            assert value is not None
            seen_work = seen_work or value > 0
            if not waiting or value != waiting[-1]:
                waiting.append(value)
            await asyncio.sleep(0.05)
        await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 2))
    # Set on every turn of the consumer loop. While "big" ran, "next" waited
    # with its 30 texts: more than "big" alone (40) could report, never more
    # than both. At the end: nothing waits.
    assert max(waiting) > 40, waiting
    assert max(waiting) <= 70, waiting
    assert waiting[-1] == 0
