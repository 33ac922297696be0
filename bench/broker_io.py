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
from typing import TYPE_CHECKING, Any, Self

from aiokafka import AIOKafkaProducer

from consumer.engine.base import GradingEngine
from consumer.kafka import Start, TopicReader, client_kwargs
from consumer.metrics import Metrics
from consumer.pipeline.app import ConsumerApp
from consumer.pipeline.service import consumer_running
from consumer.settings import Settings
from consumer.testing.topics import TopicNames, create_topics, job, make_settings
from consumer.tools.broker import EmbeddedBroker

if TYPE_CHECKING:
    from consumer.kafka import Record

# Tansu answers a group join only after about half the session timeout.
TANSU_GROUP_KWARGS = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}
BIG = 16 * 1024 * 1024

OnRecord = Callable[["Record"], None]


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
        topic = self._settings.kafka.requests_topic
        acks = [await self._producer.send(topic, value=value, key=job_id.encode()) for job_id, value in jobs]
        await asyncio.gather(*acks)


def output_reader(settings: Settings, topics: Sequence[str], fetch_max_wait_ms: int = 5) -> TopicReader:
    """The topics from their end as of ``__aenter__`` (the project's one reader).

    A small ``fetch_max_wait_ms`` makes the broker answer a fetch as soon as
    anything arrives, so the receipt time a callback takes (``time.time()``)
    is close to when a record became readable.
    """
    return TopicReader(
        client_kwargs(settings), topics, start=Start.END, max_message_bytes=BIG, fetch_max_wait_ms=fetch_max_wait_ms
    )


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

    def on_record(record: Record) -> None:
        if also is not None:
            also(record)
        value = record.value
        if record.topic == progress_topic and value is not None and b'"complete"' in value:
            event = json.loads(value)
            if event.get("event") == "complete" and event.get("job_id") in wanted:
                complete[event["job_id"]] = event["data"]

    await reader.until(lambda: len(complete) == len(wanted), on_record, timeout_s=timeout_s)
    return complete
