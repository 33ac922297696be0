"""Admission as a unit: caps, the backlog, retries first, pausing (a consumer double, no broker)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from aiokafka import TopicPartition

from consumer.metrics import Metrics
from consumer.pipeline.intake import Job, Rejection
from consumer.pipeline.work import Record
from consumer.settings import Settings
from consumer.testing.topics import items
from tests.pipeline import doubles
from tests.pipeline.doubles import Admission, Clock, Consumer, InFlight, Redeliveries

A, B = TopicPartition("requests", 0), TopicPartition("requests", 1)


@dataclass(frozen=True)
class _Record:
    partition: int
    offset: int
    value: bytes | None
    topic: str = "requests"


def _request(n: int) -> bytes:
    return json.dumps({"items": items(n)}).encode()


@dataclass
class _Run:
    remaining: int
    request_bytes: int = 0


class _Fixture:
    def __init__(self, outputs_ok: bool = True) -> None:
        self.consumer, self.metrics, clock = Consumer(A, B), Metrics(), Clock()
        settings = Settings(MAX_INFLIGHT_ITEMS=10, MAX_CONCURRENT_JOBS=2, DELIVERY_RETRY_BACKOFF_S=0,  # type: ignore[call-arg]
                            DELIVERY_RETRY_BACKOFF_MAX_S=0)  # fmt: skip
        work = doubles.work(self.consumer, settings, self.metrics, clock)
        self.inflight, self.redelivery = InFlight(work), Redeliveries(work, clock)
        self.outputs_ok = outputs_ok
        self.admission = Admission(work, outputs_ok=lambda: self.outputs_ok)
        self.loop = asyncio.new_event_loop()

    def running(self, remaining: int) -> None:
        task = self.loop.create_future()
        self.inflight.add(task, Record(A, _Record(0, 0, b""), run=_Run(remaining)))  # type: ignore[arg-type]

    def gauge(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(name)

    def close(self) -> None:
        self.loop.close()


def test_an_idle_consumer_takes_a_job_above_the_caps_and_a_busy_one_keeps_it_waiting_paused() -> None:
    f = _Fixture()
    f.admission.add(A, _Record(0, 1, _request(30)))  # 30 items > MAX_INFLIGHT_ITEMS=10
    started = f.admission.next(lambda tp: True)
    assert started is not None and isinstance(started[2], Job) and len(started[2].items) == 30
    f.running(30)
    f.admission.add(A, _Record(0, 2, _request(3)))
    f.admission.add(B, _Record(1, 0, b"not json"))
    assert f.admission.next(lambda tp: True) is None  # 30 + 3 > 10: waits, in arrival order
    f.admission.apply_pause()
    assert f.consumer.paused() == {A, B}
    assert f.gauge("texteval_partitions_paused") == 2
    assert f.gauge("texteval_items_waiting") == 33  # texts in flight and in the backlog
    f.inflight.pop(next(iter(f.inflight.tasks())))
    assert [r[1].offset for r in iter(lambda: f.admission.next(lambda tp: True), None)] == [2, 0]
    f.admission.apply_pause()
    assert f.consumer.paused() == set() and f.gauge("texteval_items_waiting") == 0
    f.close()


def test_nothing_new_starts_while_a_delivery_fails_but_the_retry_goes_first() -> None:
    f = _Fixture()
    f.admission.add(B, _Record(1, 5, _request(2)))
    f.redelivery.failed(A, _Record(0, 3, _request(2)), {})
    assert f.admission.next(lambda tp: True) is None  # a new job's grades could not be written either
    f.admission.retry(f.redelivery.due())
    retried = f.admission.next(lambda tp: True)
    assert retried is not None and (retried[0], retried[1].offset) == (A, 3)
    f.redelivery.delivered(A, 3)
    new = f.admission.next(lambda tp: True)
    assert new is not None and (new[0], new[1].offset) == (B, 5)
    f.close()


def test_missing_outputs_or_a_partition_whose_state_is_not_loaded_hold_the_backlog() -> None:
    f = _Fixture(outputs_ok=False)
    f.admission.add(A, _Record(0, 0, None))
    assert f.admission.next(lambda tp: True) is None
    f.admission.apply_pause()
    assert f.consumer.paused() == {A, B}
    f.outputs_ok = True
    assert f.admission.next(lambda tp: tp != A) is None  # its job state is still being read
    started = f.admission.next(lambda tp: True)
    assert started is not None and isinstance(started[2], Rejection)  # an empty value: a dead letter
    f.admission.add(A, _Record(0, 1, _request(1)))
    f.admission.add(B, _Record(1, 1, _request(1)))
    f.admission.drop({A})
    assert len(f.admission) == 1
    f.admission.drop()
    assert len(f.admission) == 0
    f.close()
