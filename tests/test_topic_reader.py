"""consumer.kafka.TopicReader, the one reader every tool uses: where it starts, when it stops."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from consumer.kafka import Start, TopicReader
from consumer.testing.topics import create_topics, produce
from tests.kafka_harness import TopicNames

if TYPE_CHECKING:
    from consumer.kafka import Record


def _messages(n: int, tag: str) -> list[tuple[bytes | None, bytes | None]]:
    return [(f"k{i}".encode(), f"{tag}-{i}".encode()) for i in range(n)]


async def test_from_the_end_sees_only_what_is_produced_after_it_opens(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    await create_topics(kafka_bootstrap, [topic_names.results, topic_names.progress])
    await produce(kafka_bootstrap, topic_names.results, _messages(4, "before"))
    seen: list[Record] = []
    client = {"bootstrap_servers": kafka_bootstrap}
    async with TopicReader(client, [topic_names.results, topic_names.progress], start=Start.END) as reader:
        await produce(kafka_bootstrap, topic_names.results, _messages(3, "after"))
        await produce(kafka_bootstrap, topic_names.progress, _messages(2, "event"))
        await reader.until(lambda: len(seen) >= 5, seen.append, timeout_s=30)
    assert sorted(r.value for r in seen if r.value) == [b"after-0", b"after-1", b"after-2", b"event-0", b"event-1"]
    assert {r.topic for r in seen} == {topic_names.results, topic_names.progress}


async def test_from_the_beginning_to_the_end_reads_everything_then_stops(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    await create_topics(kafka_bootstrap, [topic_names.results])
    await produce(kafka_bootstrap, topic_names.results, _messages(6, "old"))
    seen: list[Record] = []
    async with TopicReader({"bootstrap_servers": kafka_bootstrap}, [topic_names.results], start=Start.BEGINNING) as r:
        await r.to_end(seen.append)
        await r.to_end(seen.append)  # nothing new: returns at once, reads nothing twice
    assert sorted(r.value for r in seen if r.value) == [f"old-{i}".encode() for i in range(6)]


async def test_a_condition_never_met_times_out_and_a_missing_topic_is_a_lookup_error(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    await create_topics(kafka_bootstrap, [topic_names.results])
    client = {"bootstrap_servers": kafka_bootstrap}
    async with TopicReader(client, [topic_names.results], start=Start.END) as reader:
        with pytest.raises(TimeoutError, match="condition not reached"):
            await reader.until(lambda: False, lambda record: None, timeout_s=0.3)
    with pytest.raises(LookupError, match="does not exist"):
        async with TopicReader(client, ["no-such-topic-here"], start=Start.END, metadata_timeout_s=0.5):
            pass
