"""The job states of this consumer's partitions, and the compacted topic that keeps them.

Partition *p* of the topic holds the jobs of requests partition *p*, so
whoever owns a requests partition reads exactly its slice on assignment.
Writes are batched: ``put``/``delete`` mark a job, ``flush`` writes every
marked one and waits for the broker's acknowledgements (before each offset
commit). A finished job past ``retention_s`` is deleted (a tombstone) when
its partition is loaded and by ``expire``, which the ledger calls on a timer.

Erasure (contract 1.2): ``erase`` deletes a job's state now and keeps the id
out until the erase's TTL ends: a ``put`` of it is dropped (a re-sent request
is answered ``cancelled`` without a new record), and a record of it read by a
later ``load`` (the last owner died before its tombstone) is deleted again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from consumer.kafka import Start, TopicReader
from consumer.pipeline.jobstate.record import JobState, UnknownSchemaVersion

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from consumer.kafka import Record
    from consumer.metrics import Metrics

logger = logging.getLogger(__name__)


class SkipReason(StrEnum):
    """The `reason` label of texteval_job_state_skipped: a job-state record not loaded."""

    UNKNOWN_VERSION = "unknown_version"  # a newer consumer's
    UNREADABLE = "unreadable"


class JobStateStore:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        client: Mapping[str, Any],
        metrics: Metrics,
        *,
        topic: str,
        retention_s: float,
        max_message_bytes: int = 16 * 1024 * 1024,
        load_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._producer = producer
        self._client = client  # consumer.kafka.client_kwargs: the topic is read with no consumer group
        self._max_message_bytes = max_message_bytes
        self._metrics = metrics
        metrics.expect(metrics.job_state_skipped, SkipReason)
        self.topic = topic
        self._retention_s = retention_s
        self._load_timeout_s = load_timeout_s
        self._clock = clock  # unix time: records carry it, and another process reads it
        self._states: dict[str, JobState] = {}
        self._dirty: set[str] = set()
        self._deleted: dict[str, int] = {}  # job_id -> partition, tombstones to write
        self._erased: dict[str, float] = {}  # job_id -> unix time until which no record of it is kept

    def get(self, job_id: str) -> JobState | None:
        return self._states.get(job_id)

    def put(self, state: JobState) -> None:
        if self._erased.get(state.job_id, 0.0) > self._clock():
            return  # erased: nothing of it is written again within the erase's TTL
        state.updated_at = self._clock()
        self._states[state.job_id] = state
        self._dirty.add(state.job_id)
        self._deleted.pop(state.job_id, None)

    def delete(self, job_id: str) -> None:
        if (state := self._states.pop(job_id, None)) is not None:
            self._dirty.discard(job_id)
            self._deleted[job_id] = state.partition

    def erase(self, job_id: str, until_s: float) -> None:
        """Delete the job's state (a tombstone on the next ``flush``) and keep it out until ``until_s``."""
        self._erased[job_id] = max(until_s, self._erased.get(job_id, 0.0))
        self.delete(job_id)

    def __len__(self) -> int:
        return len(self._states)

    async def load(self, partitions: Iterable[int]) -> int:
        """Read these partitions of the topic from the beginning; returns the states kept."""
        wanted = sorted(set(partitions))
        if not wanted:
            return 0
        reader = TopicReader(
            self._client, [self.topic], start=Start.BEGINNING, partitions=wanted,
            max_message_bytes=self._max_message_bytes, metadata_timeout_s=self._load_timeout_s, by_name=True,
        )  # fmt: skip
        async with reader:
            async with asyncio.timeout(self._load_timeout_s):
                await reader.to_end(self._apply)
        self.expire()
        loaded = set(wanted)
        return sum(1 for state in self._states.values() if state.partition in loaded)

    def expire(self) -> int:
        """Delete the finished jobs past the retention (written by the next ``flush``); returns how many."""
        now = self._clock()
        horizon = now - self._retention_s
        old = [s.job_id for s in self._states.values() if s.finished and s.updated_at < horizon]
        for job_id in old:
            self.delete(job_id)
        self._erased = {job_id: until for job_id, until in self._erased.items() if until > now}
        for job_id in [j for j in self._erased if j in self._states]:  # read back by a load
            self.delete(job_id)
        return len(old)

    def _apply(self, record: Record) -> None:
        key, value = record.key, record.value
        if key is None:
            return
        job_id = key.decode("utf-8", "replace")
        if value is None:
            self._states.pop(job_id, None)
            return
        try:
            self._states[job_id] = JobState.decode(value)
        except UnknownSchemaVersion as exc:  # a newer consumer's record: left alone, not overwritten by a guess
            self._skipped(job_id, SkipReason.UNKNOWN_VERSION, f"version {exc.version!r}")
        except ValueError as exc:  # json's and pydantic's too: a record we cannot read must not stop the load
            self._skipped(job_id, SkipReason.UNREADABLE, type(exc).__name__)

    def _skipped(self, job_id: str, reason: SkipReason, why: str) -> None:
        logger.error("job-state record for job_id=%s skipped (%s): %s", job_id, reason, why)
        self._metrics.job_state_skipped.labels(reason=reason).inc()

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their states now belong to another owner."""
        gone = set(partitions)
        for job_id in [j for j, s in self._states.items() if s.partition in gone]:
            del self._states[job_id]
            self._dirty.discard(job_id)

    async def flush(self) -> None:
        """Write every changed state (and pending tombstones); return when the broker acknowledged them."""
        dirty, deleted = self._dirty, self._deleted
        self._dirty, self._deleted = set(), {}
        try:
            acks: list[Awaitable[Any]] = []
            for job_id in dirty:
                if (state := self._states.get(job_id)) is not None:
                    acks.append(await self._send(job_id, state.partition, state.encode()))
            for job_id, partition in deleted.items():
                acks.append(await self._send(job_id, partition, None))
            await asyncio.gather(*acks)
        except BaseException:
            # Written again on the next flush; offsets wait for it.
            self._dirty |= dirty
            self._deleted |= deleted
            raise

    async def _send(self, job_id: str, partition: int, value: bytes | None) -> Awaitable[Any]:
        ack: Awaitable[Any] = await self._producer.send(
            self.topic, key=job_id.encode(), value=value, partition=partition
        )
        return ack
