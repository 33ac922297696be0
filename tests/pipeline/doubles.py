"""Test doubles shared by the pipeline's unit tests (one copy of each, not one per file)."""

from __future__ import annotations

import asyncio
from typing import Any

from consumer.contract import CancelledEvent, CompleteEvent
from consumer.metrics import Metrics
from consumer.pipeline.jobstate import JobStateStore, Ledger, Progress


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
