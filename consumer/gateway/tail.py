"""One reader of the whole progress topic, feeding the job store.

No consumer group: every gateway instance reads every partition, so any
instance can serve any job, including jobs produced straight to Kafka by
other systems. At start it seeks each partition to the first record newer
than ``JOB_TTL_SECONDS`` (the whole history of every job still servable)
and reads up to the end before it reports ``caught_up``; until then a job
it has not met yet is not "not found", only not read yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from consumer.contract import ProgressEvent
from consumer.gateway.jobs import AnyProgressEvent, JobStore
from consumer.gateway.metrics import GatewayMetrics
from consumer.kafka import client_kwargs, topic_partitions

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from consumer.settings import Settings

logger = logging.getLogger(__name__)

_EVENT = TypeAdapter[AnyProgressEvent](ProgressEvent)
_EXPIRE_EVERY_S = 5.0


class ProgressTail:
    def __init__(self, settings: Settings, store: JobStore, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self.caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._start_ends: dict[Any, int] = {}
        self._partitions: list[Any] = []

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        s = self._settings
        consumer = AIOKafkaConsumer(
            **client_kwargs(s),
            client_id="texteval-gateway",
            group_id=None,
            enable_auto_commit=False,
            # The broker answers a fetch as soon as one record is there; this
            # bounds the idle round trip, not the delivery latency.
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=s.kafka_max_message_bytes,
            fetch_max_bytes=s.kafka_max_message_bytes,
        )
        await consumer.start()
        try:
            self._partitions = await topic_partitions(consumer, s.progress_topic)
            consumer.assign(self._partitions)
            await self._seek_to_window(consumer)
            self._start_ends = await consumer.end_offsets(self._partitions)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        await self._check_caught_up(consumer)
        self._task = asyncio.create_task(self._run(consumer), name="progress-tail")

    async def _seek_to_window(self, consumer: AIOKafkaConsumer) -> None:
        since_ms = int((time.time() - self._settings.job_ttl_seconds) * 1000)
        try:
            found = await consumer.offsets_for_times(dict.fromkeys(self._partitions, since_ms))
        except Exception:  # noqa: BLE001 - a broker without timestamp lookups: read it all
            logger.warning("the broker cannot look offsets up by time; reading the progress topic from its start")
            await consumer.seek_to_beginning(*self._partitions)
            return
        for tp in self._partitions:
            position = found.get(tp)
            if position is None:  # nothing that recent: start at the end
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, position.offset)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        if self.caught_up.is_set():
            return
        for tp in self._partitions:
            if await consumer.position(tp) < self._start_ends.get(tp, 0):
                return
        self.caught_up.set()
        self._metrics.tail_caught_up.set(1)
        logger.info("progress topic read up to its end: %d jobs kept", len(self._store))

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        next_expiry = time.monotonic() + _EXPIRE_EVERY_S
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500)
            except Exception:
                # aiokafka reconnects by itself; a fetch error is reported and retried.
                logger.exception("progress tail fetch failed; retrying")
                self._metrics.kafka_up.set(0)
                await asyncio.sleep(1.0)
                continue
            self._metrics.kafka_up.set(1)
            for records in batches.values():
                for record in records:
                    self._apply(record)
            await self._check_caught_up(consumer)
            for tp in self._partitions:
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    lag = max(0, highwater - await consumer.position(tp))
                    self._metrics.tail_lag.labels(str(tp.partition)).set(lag)
            if time.monotonic() >= next_expiry:
                self._store.expire(time.time())
                next_expiry = time.monotonic() + _EXPIRE_EVERY_S
            self._metrics.jobs_kept.set(len(self._store))
            self._metrics.bytes_kept.set(self._store.bytes_kept)

    def _apply(self, record: Any) -> None:
        if not record.value:
            self._metrics.invalid_events.inc()
            return
        try:
            event = _EVENT.validate_json(record.value)
        except ValidationError:
            # Logged by position only: a record value may hold anything.
            logger.warning("skipping a progress record that is not a contract event at %s:%d:%d",
                           record.topic, record.partition, record.offset)  # fmt: skip
            self._metrics.invalid_events.inc()
            return
        self._store.apply(event, record.value.decode("utf-8"), offset=record.offset, timestamp_ms=record.timestamp)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            async with asyncio.timeout(self._settings.kafka_close_timeout_s):
                await consumer.stop()
