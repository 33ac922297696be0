"""The scheduler with the real engine and a real broker: a 2-item job behind a
large one (8) finishes earlier under ``fair`` than under ``fifo``.

A short engine queue (ENGINE_QUEUE_DEPTH 4) stands in for a GPU kept full by
many big jobs; one partition keeps the two jobs' events in one ordered stream.
"""

from __future__ import annotations

import pytest

from consumer.engine.vllm_engine import VllmEngine
from consumer.testing.topics import (
    TopicNames,
    count_events,
    items,
    job,
    make_settings,
    produce,
    read_until,
    running,
    values,
)

pytestmark = [pytest.mark.engine, pytest.mark.kafka]


async def small_behind_large(
    engine: VllmEngine, bootstrap: str, group_kwargs: dict[str, int], policy: str
) -> tuple[list[str], dict[str, float]]:
    """(job ids in the order their ``complete`` came, each job's total_time_seconds)."""
    topics = TopicNames.unique()
    settings = make_settings(bootstrap, topics, group_kwargs, SCHEDULING_POLICY=policy, ENGINE_QUEUE_DEPTH=4)
    async with running(settings, engine, partitions=1):
        await produce(
            bootstrap,
            topics.requests,
            [(b"large", job("large", items(8, "L"))), (b"small", job("small", items(2, "S")))],
        )
        events = values(await read_until(bootstrap, topics.progress, count_events("complete", 2), timeout_s=600))
    complete = [e for e in events if e["event"] == "complete"]
    assert all(e["data"]["succeeded"] + e["data"]["failed"] == e["data"]["total_processed"] for e in complete)
    return [e["job_id"] for e in complete], {e["job_id"]: e["data"]["total_time_seconds"] for e in complete}


async def test_a_small_job_behind_a_large_one_finishes_earlier_under_fair_than_fifo(
    real_engine: VllmEngine, kafka_bootstrap: str, kafka_group_kwargs: dict[str, int]
) -> None:
    fair_order, fair_s = await small_behind_large(real_engine, kafka_bootstrap, kafka_group_kwargs, "fair")
    _, fifo_s = await small_behind_large(real_engine, kafka_bootstrap, kafka_group_kwargs, "fifo")
    assert fair_order == ["small", "large"]  # it overtook the large job
    assert fair_s["small"] < fifo_s["small"], (fair_s, fifo_s)
    # Under fifo it waited for most of the large job: its items went to the engine last.
    assert fifo_s["small"] > 0.6 * fifo_s["large"], fifo_s
