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
consumer calls it from one event loop. ``checkpoint.Checkpoint`` commits what
it allows, on a timer, on revoke and on the drain, so a failed commit is
simply retried with the next `committable()`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["OffsetTracker"]

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
