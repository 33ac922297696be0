"""Kafka plumbing for the benchmarks: a broker, fresh topics, a ready consumer, a producer, a reader.

The consumer under test is always ``consumer_running`` (the production
wiring) or ``texteval run`` itself; only the client side lives here.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.engine.base import GradingEngine
from consumer.kafka import client_kwargs, topic_partitions
from consumer.metrics import Metrics
from consumer.pipeline.app import ConsumerApp
from consumer.pipeline.service import consumer_running
from consumer.settings import Settings
from consumer.testing.topics import TopicNames, create_topics, job, make_settings
from consumer.tools.broker import EmbeddedBroker

# Tansu answers a group join only after about half the session timeout.
TANSU_GROUP_KWARGS = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}
BIG = 16 * 1024 * 1024

# (topic, key, value, wall-clock receipt time in seconds since the epoch)
OnRecord = Callable[[str, bytes | None, bytes | None, float], None]


@dataclass(frozen=True, slots=True)
class KafkaTarget:
    bootstrap: str
    group_kwargs: dict[str, int] = field(default_factory=dict)
    kind: str = "external"


@contextmanager
def kafka_target() -> Iterator[KafkaTarget]:
    """``KAFKA_BOOTSTRAP_SERVERS`` if set, else an embedded Tansu broker for this run."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield KafkaTarget(external, {}, "external broker")
        return
    with EmbeddedBroker() as broker:
        yield KafkaTarget(broker.bootstrap_servers, TANSU_GROUP_KWARGS, "embedded Tansu broker (memory storage)")


async def fresh_settings(target: KafkaTarget, **overrides: Any) -> Settings:
    """Settings on topics no other benchmark or run has touched (3 partitions each)."""
    topics = TopicNames.unique()
    await create_topics(target.bootstrap, topics)
    return make_settings(target.bootstrap, topics, target.group_kwargs, **overrides)


@asynccontextmanager
async def consumer_ready(settings: Settings, engine: GradingEngine, metrics: Metrics) -> AsyncIterator[ConsumerApp]:
    """``consumer_running``, yielded once it holds its partitions: joining the
    group is start-up, not part of any timed arm."""
    async with consumer_running(settings, engine, metrics) as app:
        deadline = time.monotonic() + 60
        while not app.health_report().ready:
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer not ready: {app.health_report().reasons}")
            await asyncio.sleep(0.05)
        yield app


def encode_job(job_id: str, items: Sequence[dict[str, str]]) -> bytes:
    """Serialised before the clock starts: the producer's JSON is not the system under test."""
    return job(job_id, items)


def new_job_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class JobProducer:
    """A started producer, so connecting is not inside a timed arm."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(**client_kwargs(settings), max_request_size=BIG, acks="all")

    async def __aenter__(self) -> Self:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, jobs: Sequence[tuple[str, bytes]]) -> None:
        """Produce (job_id, value) requests and wait for the broker's acks."""
        topic = self._settings.requests_topic
        acks = [await self._producer.send(topic, value=value, key=job_id.encode()) for job_id, value in jobs]
        await asyncio.gather(*acks)


class TopicReader:
    """Reads topics from their end as of ``__aenter__``, stamping each record's receipt time.

    A small ``fetch_max_wait_ms`` makes the broker answer a fetch as soon as
    anything arrives, so receipt time is close to when a record became readable.
    """

    def __init__(self, settings: Settings, topics: Sequence[str], fetch_max_wait_ms: int = 5) -> None:
        self._topics = list(topics)
        self._consumer = AIOKafkaConsumer(
            **client_kwargs(settings),
            enable_auto_commit=False,
            fetch_max_wait_ms=fetch_max_wait_ms,
            fetch_max_bytes=BIG,
            max_partition_fetch_bytes=BIG,
        )

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        partitions: list[TopicPartition] = []
        for topic in self._topics:
            partitions += await topic_partitions(self._consumer, topic)
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self._consumer.position(tp)  # resolve now, so no later record is skipped
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._consumer.stop()

    async def until(self, done: Callable[[], bool], on_record: OnRecord, timeout_s: float = 600.0) -> None:
        """Hand every record to ``on_record`` until ``done()``."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {self._topics}: condition not reached in {timeout_s:.0f} s")
            batches = await self._consumer.getmany(timeout_ms=100)
            received_at = time.time()
            for tp, records in batches.items():
                for record in records:
                    on_record(tp.topic, record.key, record.value, received_at)


async def wait_complete(
    reader: TopicReader,
    progress_topic: str,
    job_ids: Sequence[str],
    also: OnRecord | None = None,
    timeout_s: float = 600.0,
) -> dict[str, dict[str, Any]]:
    """Read until every job's ``complete`` event has arrived; returns their ``data`` by job id.

    ``also`` sees every record too (results, batch events), for benchmarks
    that measure more than completion.
    """
    wanted = set(job_ids)
    complete: dict[str, dict[str, Any]] = {}

    def on_record(topic: str, key: bytes | None, value: bytes | None, received_at: float) -> None:
        if also is not None:
            also(topic, key, value, received_at)
        if topic == progress_topic and value is not None and b'"complete"' in value:
            event = json.loads(value)
            if event.get("event") == "complete" and event.get("job_id") in wanted:
                complete[event["job_id"]] = event["data"]

    await reader.until(lambda: len(complete) == len(wanted), on_record, timeout_s)
    return complete
