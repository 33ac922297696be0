"""Which offsets are safe to commit when records finish out of order.

Each record is a job whose items are graded concurrently, so the records of
one partition complete in any order. Kafka keeps a single committed offset
per partition, and it means "everything before this is processed": committing
past an unfinished record would lose it on a restart or rebalance. So the
commit point may only advance over the contiguous prefix of done records, and
what is committed is the offset of the next record to read, one past the last
done record of that prefix.

Offsets within a partition can have gaps (compaction, transaction markers),
so only offsets actually received count; the tracker never assumes `n + 1`
follows `n`. `OffsetTracker` is a pure data structure, no asyncio: the
consumer calls it from one event loop. `Committer` is the other half: it
commits what the tracker allows, on a timer and on revoke, so a failed commit
is simply retried with the next `committable()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from aiokafka.errors import KafkaError

from consumer.metrics import Metrics

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["Committer", "OffsetTracker"]

logger = logging.getLogger(__name__)

TP = TypeVar("TP", bound=Hashable)


@dataclass(slots=True)
class _Partition:
    # Received offsets not yet passed by the commit point, oldest first. Done
    # records stay here while an older one is still running.
    received: deque[int] = field(default_factory=deque)
    # Received and not yet done: O(1) "is this a known, unfinished record?".
    running: set[int] = field(default_factory=set)
    # Done but blocked behind an older running record (a subset of `received`).
    done: set[int] = field(default_factory=set)
    last_tracked: int | None = None
    # One past the last record of the done prefix; None until one is done.
    position: int | None = None
    committed: int | None = None


class OffsetTracker(Generic[TP]):
    """Per-partition watermark of done records; keys are aiokafka TopicPartition (any hashable works).

    Every operation is O(1) amortised per record: each offset enters the deque
    once and leaves it once, when the done prefix is popped from the left.
    """

    def __init__(self) -> None:
        self._partitions: dict[TP, _Partition] = {}

    def track(self, tp: TP, offset: int) -> None:
        """A record was received. Offsets must increase within a partition."""
        part = self._partitions.setdefault(tp, _Partition())
        # A rewind (seek, re-delivery without a revoke in between) would make
        # the prefix logic unsound, so refuse it loudly rather than guess.
        if part.last_tracked is not None and offset <= part.last_tracked:
            raise ValueError(f"offset {offset} for {tp!r} is not after the last tracked {part.last_tracked}")
        part.last_tracked = offset
        part.received.append(offset)
        part.running.add(offset)

    def mark_done(self, tp: TP, offset: int) -> None:
        """The record is fully done. Unknown partitions or offsets are ignored.

        A job can finish after its partition was revoked and dropped, or be
        reported twice; neither may move any commit point.
        """
        part = self._partitions.get(tp)
        if part is None or offset not in part.running:
            return
        part.running.remove(offset)
        part.done.add(offset)
        received, done = part.received, part.done
        while received and received[0] in done:
            head = received.popleft()
            done.remove(head)
            part.position = head + 1

    def committable(self) -> dict[TP, int]:
        """Offsets to commit: partitions whose commit point moved past the last commit.

        Partitions without progress are left out, so an idle consumer does not
        re-commit the same offsets on every tick.
        """
        return {
            tp: part.position
            for tp, part in self._partitions.items()
            if part.position is not None and (part.committed is None or part.position > part.committed)
        }

    def mark_committed(self, offsets: dict[TP, int]) -> None:
        """Record a successful commit of `offsets` (as returned by `committable`).

        Partitions dropped while the commit was in flight are ignored, and an
        older commit finishing late never moves the committed offset back.
        """
        for tp, offset in offsets.items():
            part = self._partitions.get(tp)
            if part is not None and (part.committed is None or offset > part.committed):
                part.committed = offset

    def committed(self, tp: TP) -> int | None:
        """Last committed offset of a partition; None if never committed here or not tracked.

        Lag is measured from it: the broker's high watermark minus this.
        """
        part = self._partitions.get(tp)
        return None if part is None else part.committed

    def drop(self, partitions: Iterable[TP]) -> None:
        """Forget partitions (after a revoke); their late `mark_done` calls are ignored."""
        for tp in partitions:
            self._partitions.pop(tp, None)

    def pending(self, tp: TP | None = None) -> int:
        """Records tracked but not yet done, in one partition or in all."""
        if tp is not None:
            part = self._partitions.get(tp)
            return 0 if part is None else len(part.running)
        return sum(len(part.running) for part in self._partitions.values())

    def partitions(self) -> set[TP]:
        """Partitions currently tracked."""
        return set(self._partitions)


class Committer:
    """Commits the tracker's safe offsets through the consumer; keeps the lag gauge.

    Never a bare ``commit()`` (that would commit the fetch position, past
    jobs still in flight): always the explicit offsets the tracker allows.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        tracker: OffsetTracker[TopicPartition],
        metrics: Metrics,
        *,
        interval_s: float,
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``before_commit``: state that must be durable before offsets move past it (job state)."""
        self._before_commit = before_commit
        self._consumer = consumer
        self._tracker = tracker
        self._metrics = metrics
        self._interval_s = interval_s

    async def run(self) -> None:
        """Commit on a short timer (cancel to stop)."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.commit()
            except KafkaError as exc:  # e.g. a rebalance in progress: the next turn retries
                logger.warning("commit failed: %r", exc)
            self._update_lag()

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets = self._tracker.committable()
        if only is not None:
            offsets = {tp: offset for tp, offset in offsets.items() if tp in only}
        if self._before_commit is not None:
            await self._before_commit()
        if not offsets:
            return
        started = time.perf_counter()
        await self._consumer.commit(offsets)
        self._metrics.commit_latency_seconds.observe(time.perf_counter() - started)
        self._tracker.mark_committed(offsets)

    async def release(self, revoked: set[TopicPartition], timeout_s: float) -> None:
        """On revoke: commit what is done in those partitions (bounded), then forget them."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.commit(only=revoked)
        except (KafkaError, TimeoutError) as exc:
            logger.warning("commit on revoke failed: %r", exc)
        self._tracker.drop(revoked)
        for tp in revoked:
            with contextlib.suppress(KeyError):
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    def _update_lag(self) -> None:
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            if end is None:
                continue
            committed = self._tracker.committed(tp)
            behind = end - committed if committed is not None else self._tracker.pending(tp)
            self._metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, behind))
