"""The work this consumer runs now: one asyncio task per record, and what it is for.

A task grades a job (``run``), sends a dead letter (``rejection``), or
publishes a job-state answer (a finished job's event, ``cancelled``). The
loop adds them; admission reads the totals; a rebalance or a shutdown
aborts them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from consumer.pipeline.intake import Rejection
from consumer.pipeline.jobs import JobRun
from consumer.pipeline.jobstate import Lease


@dataclass(slots=True)
class Work:
    tp: TopicPartition
    record: Any  # ConsumerRecord[bytes, bytes] or fetch.Unreadable
    run: JobRun | None = None  # a job being graded
    lease: Lease | None = None  # the run's right to write its job state
    rejection: Rejection | None = None  # a dead letter being sent


class InFlight:
    def __init__(self) -> None:
        self._work: dict[asyncio.Task[None], Work] = {}

    def add(self, task: asyncio.Task[None], work: Work) -> None:
        self._work[task] = work

    def pop(self, task: asyncio.Task[None]) -> Work:
        return self._work.pop(task)

    def tasks(self, partitions: Collection[TopicPartition] | None = None) -> list[asyncio.Task[None]]:
        return [t for t, w in self._work.items() if partitions is None or w.tp in partitions]

    def __len__(self) -> int:
        return len(self._work)

    @property
    def jobs(self) -> int:
        return sum(1 for work in self._work.values() if work.run is not None)

    @property
    def items(self) -> int:
        """Items of the running jobs not yet back from the engine."""
        return sum(work.run.remaining for work in self._work.values() if work.run is not None)

    @property
    def request_bytes(self) -> int:
        return sum(work.run.request_bytes for work in self._work.values() if work.run is not None)

    async def wait(self, timeout_s: float) -> set[asyncio.Task[None]]:
        """Wait for every task, at most ``timeout_s``; returns those still running."""
        if not self._work:
            return set()
        _, late = await asyncio.wait(list(self._work), timeout=timeout_s)
        return late

    @staticmethod
    async def cancel(tasks: Collection[asyncio.Task[None]], timeout_s: float) -> None:
        """Abort these tasks and give them ``timeout_s`` to finish their clean-up."""
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
