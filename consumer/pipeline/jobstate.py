"""Job state that outlives a process: item-level checkpoints and job ids as idempotency keys.

Where it lives: a compacted topic (``evaluation.checkpoints``, Kafka Streams'
changelog pattern), partitioned like the requests topic and keyed by
``job_id``. Partition *p* of it holds the jobs of requests partition *p*, so
whoever owns a requests partition reads exactly its slice on assignment.
The other anchor, Confluent parallel-consumer's completed-offset bitmap in
the offset commit's metadata, was rejected: the embedded broker accepts that
metadata and reads it back empty (so it could not be tested here), the
metadata is capped at 4 KB by default, and it cannot remember a job after its
offset is committed, which idempotent job ids need.

One record per job, rewritten on the commit timer before offsets are
committed (``flush``), on revoke, and when the job ends:

- running: the request's fingerprint and coordinates, the items whose result
  and progress event the broker acknowledged (a bitmap), the ok/failed counts
  and the grading time so far. A new owner grades only the other items.
- completed / cancelled: the fingerprint and the terminal event as it was
  published, kept for ``JOB_ID_RETENTION_S``: an identical re-send gets that
  event again and no grading; a different request under the same id is a
  ``job_id_conflict``. Past the retention the record is deleted (tombstone).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

logger = logging.getLogger(__name__)


def fingerprint(value: bytes) -> str:
    """Byte-identical requests have the same fingerprint (the request's own bytes, nothing else)."""
    return hashlib.sha256(value).hexdigest()


class JobPhase(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class JobState:
    job_id: str
    fingerprint: str
    partition: int
    offset: int
    total_items: int
    phase: JobPhase = JobPhase.RUNNING
    done: set[int] = field(default_factory=set)  # items whose result and progress event are acknowledged
    succeeded: int = 0
    failed: int = 0
    elapsed_s: float = 0.0  # grading time of earlier owners, so total_time_seconds covers the whole job
    updated_at: float = field(default_factory=time.time)  # unix time
    terminal: dict[str, Any] | None = None  # the complete/cancelled event as published

    @property
    def finished(self) -> bool:
        return self.phase is not JobPhase.RUNNING

    def encode(self) -> bytes:
        bits = sum(1 << i for i in self.done)
        body = {
            "schema_version": 1, "job_id": self.job_id, "fingerprint": self.fingerprint,
            "partition": self.partition, "offset": self.offset, "total_items": self.total_items,
            "phase": self.phase.value,
            "done": base64.b64encode(bits.to_bytes((self.total_items + 7) // 8, "little")).decode(),
            "succeeded": self.succeeded, "failed": self.failed, "elapsed_s": round(self.elapsed_s, 3),
            "updated_at": self.updated_at, "terminal": self.terminal,
        }  # fmt: skip
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes) -> JobState:
        raw = json.loads(value)
        bits = int.from_bytes(base64.b64decode(raw["done"]), "little")
        done = {i for i in range(raw["total_items"]) if bits >> i & 1}
        return cls(
            job_id=raw["job_id"], fingerprint=raw["fingerprint"], partition=raw["partition"], offset=raw["offset"],
            total_items=raw["total_items"], phase=JobPhase(raw["phase"]), done=done, succeeded=raw["succeeded"],
            failed=raw["failed"], elapsed_s=raw["elapsed_s"], updated_at=raw["updated_at"], terminal=raw["terminal"],
        )  # fmt: skip


class Admission(StrEnum):
    """What to do with a request, given what the state remembers of its job id."""

    NEW = "new"  # grade it all
    RESUME = "resume"  # grade the items not yet acknowledged
    DUPLICATE = "duplicate"  # identical to a job that is running: nothing to do
    REPUBLISH = "republish"  # identical to a finished job: publish its terminal event again
    CONFLICT = "conflict"  # another request under a running or finished job id: dead letter


def decide(state: JobState | None, print_: str, partition: int, offset: int, *, original_pending: bool) -> Admission:
    """``original_pending``: the state's own request record is still uncommitted (it will be read again)."""
    if state is None:
        return Admission.NEW
    if state.fingerprint != print_:
        return Admission.CONFLICT
    if state.finished:
        return Admission.REPUBLISH
    if (state.partition, state.offset) == (partition, offset) or not original_pending:
        return Admission.RESUME  # the same record read again, or a re-send whose original is gone
    return Admission.DUPLICATE


class JobStateStore:
    """The states of the jobs in this consumer's partitions, and their changelog topic."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        make_reader: Callable[[], AIOKafkaConsumer],
        *,
        topic: str,
        retention_s: float,
        load_timeout_s: float = 30.0,
    ) -> None:
        self._producer = producer
        self._make_reader = make_reader
        self.topic = topic
        self._retention_s = retention_s
        self._load_timeout_s = load_timeout_s
        self._states: dict[str, JobState] = {}
        self._dirty: set[str] = set()
        self._deleted: dict[str, int] = {}  # job_id -> partition, tombstones to write

    def get(self, job_id: str) -> JobState | None:
        return self._states.get(job_id)

    def put(self, state: JobState) -> None:
        state.updated_at = time.time()
        self._states[state.job_id] = state
        self._dirty.add(state.job_id)

    def __len__(self) -> int:
        return len(self._states)

    async def load(self, partitions: Iterable[int]) -> int:
        """Read these partitions of the changelog from the beginning; returns the states kept."""
        tps = [TopicPartition(self.topic, p) for p in partitions]
        if not tps:
            return 0
        reader = self._make_reader()
        await reader.start()
        kept = 0
        try:
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            left = {tp for tp in tps if ends[tp] > 0}
            async with asyncio.timeout(self._load_timeout_s):
                while left:
                    batches = await reader.getmany(*left, timeout_ms=200)
                    for records in batches.values():
                        for record in records:
                            self._apply(record.key, record.value)
                    # The embedded broker reports the start of the last batch
                    # + 1 as the end: reaching it means that batch was read whole.
                    left = {tp for tp in left if await reader.position(tp) < ends[tp]}
        finally:
            await reader.stop()
        now = time.time()
        for job_id, state in list(self._states.items()):
            if state.partition in {tp.partition for tp in tps}:
                if state.finished and now - state.updated_at > self._retention_s:
                    del self._states[job_id]
                    self._deleted[job_id] = state.partition
                else:
                    kept += 1
        return kept

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        job_id = key.decode("utf-8", "replace")
        if value is None:
            self._states.pop(job_id, None)
            return
        try:
            self._states[job_id] = JobState.decode(value)
        except (ValueError, KeyError, TypeError) as exc:  # a record we cannot read must not stop the load
            logger.error("unreadable checkpoint for job_id=%s skipped: %s", job_id, type(exc).__name__)

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
