"""Topics and settings for a throw-away run against a real broker.

Shared by the test suite and the benchmarks (which must not import
``tests``): every run gets its own topic names, so many runs share one
broker without seeing each other's messages.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import astuple, dataclass
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumer.engine.base import GradingEngine
from consumer.kafka import ensure_topics, topic_partitions
from consumer.metrics import Metrics
from consumer.pipeline.app import ConsumerApp
from consumer.pipeline.service import consumer_running
from consumer.settings import Settings


@dataclass(frozen=True)
class TopicNames:
    requests: str
    results: str
    progress: str
    dlt: str
    control: str
    checkpoints: str

    @classmethod
    def unique(cls) -> TopicNames:
        prefix = f"t-{uuid.uuid4().hex[:8]}"
        return cls(
            requests=f"{prefix}.evaluation.requests",
            results=f"{prefix}.evaluation.results",
            progress=f"{prefix}.evaluation.progress",
            dlt=f"{prefix}.evaluation.requests.DLT",
            control=f"{prefix}.evaluation.control",
            checkpoints=f"{prefix}.evaluation.checkpoints",
        )

    def __iter__(self) -> Iterator[str]:
        return iter(astuple(self))


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 3) -> None:
    """Create the topics (a TopicNames or any names) with `partitions` each."""
    await ensure_topics(bootstrap, dict.fromkeys(names, partitions))


def make_settings(bootstrap: str, topics: TopicNames, group_kwargs: dict[str, int], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_REQUESTS_TOPIC": topics.requests,
        "KAFKA_RESULTS_TOPIC": topics.results,
        "KAFKA_PROGRESS_TOPIC": topics.progress,
        "KAFKA_DLT_TOPIC": topics.dlt,
        "KAFKA_CONTROL_TOPIC": topics.control,
        "KAFKA_CHECKPOINTS_TOPIC": topics.checkpoints,
        "KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
        "COMMIT_INTERVAL_MS": 100,
        "SHUTDOWN_GRACE_S": 10,
    }
    if "session_timeout_ms" in group_kwargs:
        values["KAFKA_SESSION_TIMEOUT_MS"] = group_kwargs["session_timeout_ms"]
        values["KAFKA_HEARTBEAT_INTERVAL_MS"] = group_kwargs["heartbeat_interval_ms"]
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def job(job_id: str | None, items: Sequence[dict[str, str]]) -> bytes:
    body: dict[str, Any] = {"items": list(items)}
    if job_id is not None:
        body["job_id"] = job_id
    return json.dumps(body).encode()


Record: TypeAlias = ConsumerRecord[bytes, bytes]


@asynccontextmanager
async def running(settings: Settings, engine: GradingEngine, metrics: Metrics | None = None,
                  partitions: int = 3) -> AsyncIterator[ConsumerApp]:  # fmt: skip
    await create_topics(settings.kafka_bootstrap_servers, settings.service_topics(), partitions=partitions)
    async with consumer_running(settings, engine, metrics or Metrics()) as app:
        yield app


def items(n: int, prefix: str = "A", text: str = "La fotosíntesi produeix oxigen.") -> list[dict[str, str]]:
    return [
        {"id_alumno": f"{prefix}{i:04d}", "curso": "3r ESO", "consigna": "Explica la fotosíntesi.",
         "respuesta": f"{text} ({i})"}
        for i in range(n)
    ]  # fmt: skip


async def produce(bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]],
                  headers: list[tuple[str, bytes]] | None = None) -> None:  # fmt: skip
    """(key, value) pairs, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=16 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


async def read_until(bootstrap: str, topic: str, done: Callable[[list[Record]], bool],
                     timeout_s: float = 60.0) -> list[Record]:  # fmt: skip
    """Every record of the topic from the beginning, until ``done(records)``."""
    big = 16 * 1024 * 1024
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=big, max_partition_fetch_bytes=big
    )
    await consumer.start()
    records: list[Record] = []
    try:
        consumer.assign(await topic_partitions(consumer, topic))
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        while not done(records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out on {topic}: {len(records)} records")
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


def values(records: list[Record]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records if r.value is not None]


def count_events(kind: str, n: int) -> Callable[[list[Record]], bool]:
    return lambda records: sum(1 for v in values(records) if v["event"] == kind) >= n


def at_least(n: int) -> Callable[[list[Record]], bool]:
    return lambda records: len(records) >= n


async def committed(bootstrap: str, group_id: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offsets, read without joining the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
