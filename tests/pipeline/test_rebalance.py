"""Two consumers in one group: a rebalance aborts the revoked work, the new owner redoes it, nothing is lost."""

from __future__ import annotations

import pytest

from consumer.engine.fake import FakeEngine
from consumer.testing.topics import (
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


async def test_second_consumer_takes_over_revoked_partitions_without_loss(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    slow, fast = FakeEngine(delay_s=8.0), FakeEngine(delay_s=0.05)
    job_ids = [f"r-{n}" for n in range(6)]
    async with running(settings, slow) as first:
        await produce(kafka_bootstrap, topic_names.requests, [(j.encode(), job(j, items(20))) for j in job_ids])
        await wait_for(lambda: first.active_jobs == len(job_ids))  # all six in flight on the first consumer
        async with running(settings, fast) as second:
            # The join makes the first consumer give up partitions: their
            # jobs are aborted (engine work cancelled) and redone by the second.
            await wait_for(lambda: health_kafka(second)["assigned_partitions"] > 0, timeout_s=30)
            await wait_for(lambda: first.active_jobs < len(job_ids), timeout_s=30)
            progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 6)))
            results = values(await read_until(kafka_bootstrap, topic_names.results, lambda r: len(r) >= 120))
            assert await committed_to_end(kafka_bootstrap, settings.kafka.group_id, topic_names.requests)
            # Between them they own every partition. Waited for, not read once: on a
            # busy machine a missed heartbeat (2 s session) can start one more
            # rebalance, and mid-rebalance a member holds none for a moment.
            await wait_for(
                lambda: health_kafka(first)["assigned_partitions"] + health_kafka(second)["assigned_partitions"] == 3,
                timeout_s=60,
            )

    completed = {e["job_id"] for e in progress if e["event"] == "complete"}
    assert completed == set(job_ids)
    result_ids = {r["result_id"] for r in results}
    assert result_ids == {f"{j}#{i}" for j in job_ids for i in range(20)}  # 0 lost
    assert fast.calls > 0  # the second consumer graded the taken-over jobs
    # Aborted work was not published: the slow engine never finished an item
    # of a revoked job, so no result came out twice for those partitions.
    assert len(results) == len(result_ids)
    offsets = await committed(kafka_bootstrap, settings.kafka.group_id, topic_names.requests, 3)
    assert sum(o or 0 for o in offsets.values()) == len(job_ids)
