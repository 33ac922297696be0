"""Per-record redelivery and the one back-off rule, on a fake clock (no sleeps)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition

from consumer.engine.base import GradeOutcome
from consumer.metrics import Metrics
from consumer.pipeline.backoff import Backoff
from consumer.settings import Settings
from tests.pipeline import doubles
from tests.pipeline.doubles import Clock, Consumer

A, B = TopicPartition("requests", 0), TopicPartition("requests", 1)


@dataclass(frozen=True)
class _Record:
    offset: int


def _redeliveries(clock: Clock) -> doubles.Redeliveries:
    """The retry half of the record owner, with a 1 s first wait and a 60 s cap."""
    settings = Settings(DELIVERY_RETRY_BACKOFF_S=1.0, DELIVERY_RETRY_BACKOFF_MAX_S=60.0)  # type: ignore[call-arg]
    return doubles.Redeliveries(doubles.work(Consumer(A, B), settings, Metrics(), clock), clock)


def test_the_back_off_doubles_from_the_first_wait_up_to_its_cap() -> None:
    backoff = Backoff(first_s=1.0, max_s=60.0)
    assert [backoff.delay_s(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay_s(0) == 0 and backoff.delay_s(10_000) == 60  # no overflow however long it fails
    assert [Backoff(2.0, 2.0).delay_s(n) for n in (1, 5)] == [2.0, 2.0]  # a fixed wait is the same rule
    with pytest.raises(ValueError, match="back-off"):
        Backoff(first_s=5.0, max_s=1.0)


def test_each_record_backs_off_on_its_own_and_is_handed_out_once_per_failure() -> None:
    clock = Clock()
    redelivery = _redeliveries(clock)
    for _ in range(3):  # the record at A:7 failed three times in a row: 4 s
        delay_s = redelivery.failed(A, _Record(7), {})
        assert redelivery.due() == []  # not before its wait is over
        clock.now += delay_s
        assert [e.record.offset for e in redelivery.due()] == [7]
    assert delay_s == 4.0
    assert redelivery.failed(B, _Record(3), {}) == 1.0  # another record's first failure: the first step
    assert redelivery.failed(A, _Record(7), {}) == 8.0  # A:7 keeps its own count
    clock.now += 1.0
    assert [(e.tp, e.record.offset) for e in redelivery.due()] == [(B, 3)]
    assert redelivery.due() == []  # handed out: not again until it fails again
    clock.now += 7.0
    assert [(e.tp, e.record.offset) for e in redelivery.due()] == [(A, 7)]
    assert len(redelivery) == 2 and (A, 7) in redelivery


def test_a_delivered_record_is_forgotten_and_its_next_failure_starts_the_back_off_again() -> None:
    clock = Clock()
    redelivery = _redeliveries(clock)
    redelivery.failed(A, _Record(1), {})
    assert redelivery.failed(A, _Record(1), {}) == 2.0
    redelivery.delivered(A, 1)
    assert len(redelivery) == 0 and redelivery.carried(A, 1) is None
    assert redelivery.failed(A, _Record(1), {}) == 1.0


def test_carried_grades_are_the_last_failed_runs_and_a_revoke_drops_the_partitions_records() -> None:
    clock = Clock()
    redelivery = _redeliveries(clock)
    first = {0: GradeOutcome.ok(3, "b", prompt_sha256="x", latency_ms=1.0)}
    second = {**first, 1: GradeOutcome.ok(4, "c", prompt_sha256="y", latency_ms=1.0)}
    redelivery.failed(A, _Record(5), first)
    redelivery.failed(A, _Record(5), second)
    redelivery.failed(B, _Record(9), {})
    assert redelivery.carried(A, 5) == second
    second.clear()  # the entry keeps its own copy
    assert set(redelivery.carried(A, 5) or {}) == {0, 1}
    redelivery.forget({A})
    assert (A, 5) not in redelivery and (B, 9) in redelivery
    clock.now += 1.0
    assert [e.tp for e in redelivery.due()] == [B]
