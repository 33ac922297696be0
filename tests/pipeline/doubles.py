"""Test doubles shared by the pipeline's unit tests (one copy of each, not one per file)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any

from aiokafka import TopicPartition

from consumer.contract import CancelledEvent, CompleteEvent
from consumer.engine.base import GradeOutcome
from consumer.metrics import Metrics
from consumer.pipeline.jobstate import JobStateStore, Ledger, Progress
from consumer.pipeline.sinks import DeliveryFailed
from consumer.pipeline.work import Record, Work
from consumer.settings import Settings


class Producer:
    """Acknowledges every send at once and remembers it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    async def send(self, topic: str, *, key: bytes, value: bytes | None, partition: int) -> Any:
        self.sent.append((key.decode(), value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class Run:
    """What the ledger sees of a job run: its progress, its terminal event, a cancel."""

    def __init__(self) -> None:
        self.progress = Progress()
        self.terminal: CompleteEvent | CancelledEvent | None = None
        self.cancel_requested = False

    def request_cancel(self) -> None:
        self.cancel_requested = True


class Clock:
    """A clock that moves only when a test moves it."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ledger(retention_s: float) -> tuple[Ledger, JobStateStore, Producer, Clock, Metrics]:
    """A real ledger and store whose producer only records, on a fake clock."""
    producer, clock, metrics = Producer(), Clock(1_000_000.0), Metrics()
    store = JobStateStore(producer, {}, metrics, topic="s", retention_s=retention_s, clock=clock)  # type: ignore[arg-type]
    return Ledger(store, metrics, expire_every_s=60.0, clock=clock), store, producer, clock, metrics


class Consumer:
    """The consumer calls that admission and pausing make: an assignment, paused partitions."""

    def __init__(self, *assigned: TopicPartition) -> None:
        self.assigned = set(assigned)
        self.paused_: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_ |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_ -= set(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_)


def work(consumer: Consumer, settings: Settings, metrics: Metrics, clock: Clock | None = None) -> Work:
    """A record owner with only what admission, retries and pausing use (no broker, no engine)."""
    return Work(
        consumer, None, _NoEngine(), metrics, jobs=settings.jobs, kafka=settings.kafka,  # type: ignore[arg-type]
        scheduler=None, ledger=None, decisions=None,  # type: ignore[arg-type]
        clock=clock or Clock(),
    )  # fmt: skip


class _NoEngine:
    model_name = "none"


class Admission:
    """The records waiting and starting, seen through ``Work`` (the admission half)."""

    def __init__(self, work: Work, outputs_ok: Callable[[], bool]) -> None:
        self._work, self._outputs_ok = work, outputs_ok

    def __len__(self) -> int:
        return self._work.backlog

    def add(self, tp: TopicPartition, record: Any) -> None:
        self._work.add(tp, record)

    def next(self, loaded: Callable[[TopicPartition], bool]) -> tuple[TopicPartition, Any, Any] | None:
        self._work._loaded = {tp for tp in (*self._work._records, *self._work._consumer.assignment()) if loaded(tp)}
        rec = self._work.next(outputs_ok=self._outputs_ok())
        return None if rec is None else (rec.tp, rec.record, rec.parsed)

    def retry(self, due: list[Record]) -> None:
        self._work._backlog.extendleft(reversed(due))

    def apply_pause(self) -> None:
        self._work.apply_pause(outputs_ok=self._outputs_ok())

    def drop(self, partitions: Collection[TopicPartition] | None = None) -> None:
        self._work.drop(partitions)


class InFlight:
    """The running records, seen through ``Work``."""

    def __init__(self, work: Work) -> None:
        self._work = work

    def add(self, task: asyncio.Future[None], rec: Record) -> None:
        self._work._running[task] = rec  # type: ignore[index]

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._work._running)

    def pop(self, task: asyncio.Task[None]) -> Record:
        return self._work._running.pop(task)


class Redeliveries:
    """The records whose delivery failed, seen through ``Work`` (the retry half)."""

    def __init__(self, work: Work, clock: Clock) -> None:
        self._work, self._clock = work, clock

    def _find(self, tp: TopicPartition, offset: int) -> Record | None:
        return self._work._records.get(tp, {}).get(offset)

    def failed(self, tp: TopicPartition, record: Any, carried: dict[int, GradeOutcome]) -> float:
        if (rec := self._find(tp, record.offset)) is None:
            rec = self._work._records.setdefault(tp, {})[record.offset] = Record(tp, record)
        rec.run = _Unacked(carried)  # type: ignore[assignment]
        self._work._failed_delivery(rec, DeliveryFailed("results", RuntimeError()))
        assert rec.due_at is not None
        return rec.due_at - self._clock()

    def due(self) -> list[Record]:
        """The records whose wait is over, in the order they go first (taken off the backlog's head)."""
        backlog = self._work._backlog
        waiting = set(backlog)
        self._work.retry_due()
        handed = []
        while backlog and backlog[0] not in waiting:
            handed.append(backlog.popleft())
        return handed

    def carried(self, tp: TopicPartition, offset: int) -> dict[int, GradeOutcome] | None:
        rec = self._find(tp, offset)
        return rec.carried if rec is not None and rec in self._work._undelivered else None

    def delivered(self, tp: TopicPartition, offset: int) -> None:
        if (rec := self._find(tp, offset)) is not None:
            self._work._done(rec)

    def forget(self, partitions: Collection[TopicPartition]) -> None:
        self._work.drop(partitions)

    def __contains__(self, key: tuple[TopicPartition, int]) -> bool:
        rec = self._find(*key)
        return rec is not None and rec in self._work._undelivered

    def __len__(self) -> int:
        return self._work.undelivered


class _Unacked:
    def __init__(self, unacked: dict[int, GradeOutcome]) -> None:
        self.unacked = unacked
