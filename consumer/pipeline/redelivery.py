"""Records whose output could not be delivered, each with its own retry state.

One entry per record (Confluent parallel-consumer's ``WorkContainer``): how
many times in a row its delivery failed, when it may run again, and the
outcomes its runs computed and could not get acknowledged (``carried``: the
retry sends them again instead of grading them again). Back-off is per
record: a record that keeps failing waits longer and longer while another
record's first failure waits the first step, and a success elsewhere (a
dead letter, another job) resets nothing.

An entry lives until its record is delivered or its partition leaves this
consumer (the next owner reads the record again from the committed offset).
While any entry lives, output delivery is failing: that is what ``/health``
reports, and what stops admission of new jobs (their grades could not be
written either; the retries probe the outputs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from consumer.engine.base import GradeOutcome
from consumer.pipeline.backoff import Backoff

Key = tuple[TopicPartition, int]  # a record: its partition and offset


@dataclass(slots=True)
class Redelivery:
    tp: TopicPartition
    record: Any  # ConsumerRecord[bytes, bytes]
    failures: int = 0  # deliveries that failed in a row
    due_at: float | None = None  # clock time of the next attempt; None: handed out (waiting or running)
    carried: dict[int, GradeOutcome] = field(default_factory=dict)  # item index -> its unacknowledged outcome


class Redeliveries:
    def __init__(self, backoff: Backoff, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._backoff = backoff
        self._clock = clock
        self._entries: dict[Key, Redelivery] = {}

    def failed(self, tp: TopicPartition, record: Any, carried: Mapping[int, GradeOutcome]) -> float:
        """A run of this record could not deliver its output; returns the wait before the next one."""
        entry = self._entries.setdefault((tp, record.offset), Redelivery(tp, record))
        entry.failures += 1
        entry.carried = dict(carried)
        delay_s = self._backoff.delay_s(entry.failures)
        entry.due_at = self._clock() + delay_s
        return delay_s

    def due(self) -> list[Redelivery]:
        """Entries whose wait is over, oldest record first; each is handed out once per failure."""
        now = self._clock()
        ready = [e for e in self._entries.values() if e.due_at is not None and e.due_at <= now]
        for entry in ready:
            entry.due_at = None
        return sorted(ready, key=lambda e: (e.tp.topic, e.tp.partition, e.record.offset))

    def carried(self, tp: TopicPartition, offset: int) -> Mapping[int, GradeOutcome] | None:
        entry = self._entries.get((tp, offset))
        return None if entry is None else entry.carried

    def delivered(self, tp: TopicPartition, offset: int) -> None:
        self._entries.pop((tp, offset), None)

    def forget(self, partitions: Collection[TopicPartition]) -> None:
        """Revoked or shut down: these records are no longer ours to retry."""
        self._entries = {key: e for key, e in self._entries.items() if key[0] not in partitions}

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
