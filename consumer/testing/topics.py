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
from consumer.kafka import Start, TopicReader, ensure_topics, topic_partitions
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
    decisions: str  # 1.3: decision records

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
            decisions=f"{prefix}.evaluation.decisions",
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
        "KAFKA_DECISIONS_TOPIC": topics.decisions,
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
    await create_topics(settings.kafka.bootstrap_servers, settings.service_topics(), partitions=partitions)
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
    records: list[Record] = []
    async with TopicReader({"bootstrap_servers": bootstrap}, [topic], start=Start.BEGINNING) as reader:
        try:
            await reader.until(lambda: done(records), records.append, timeout_s=timeout_s)
        except TimeoutError:
            raise AssertionError(f"timed out on {topic}: {len(records)} records") from None
    return records


async def read_all(bootstrap: str, topic: str) -> list[Record]:
    """Every record of the topic, from the beginning up to its end as of now."""
    records: list[Record] = []
    async with TopicReader({"bootstrap_servers": bootstrap}, [topic], start=Start.BEGINNING) as reader:
        await reader.to_end(records.append)
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


async def committed_to_end(bootstrap: str, group_id: str, topic: str, timeout_s: float = 30.0) -> bool:
    """True once the group's committed offset has reached the end of every
    partition of ``topic`` (every record consumed, done and committed), False
    if not within ``timeout_s``. Read without joining the group.

    For topics written one record per produce request (``produce`` above):
    the embedded broker reports a partition's end as its last *batch*'s
    base offset + 1.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, topic)
        deadline = time.monotonic() + timeout_s
        while True:
            ends = await consumer.end_offsets(partitions)
            done = [(await consumer.committed(tp) or 0) >= ends[tp] for tp in partitions]
            if all(done):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


def health_kafka(app: ConsumerApp) -> dict[str, Any]:
    """The ``kafka`` part of the app's /health body (assigned and paused partitions, ...)."""
    kafka = app.health_report().body["kafka"]
    if not isinstance(kafka, dict):
        raise TypeError(f"health body 'kafka' is a {type(kafka).__name__}")
    return kafka


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
