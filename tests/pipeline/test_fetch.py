"""SafeFetch against a consumer double: what is moved past, what is retried."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import ConsumerStoppedError, TopicAuthorizationFailedError, UnsupportedCodecError

from consumer.metrics import Metrics
from consumer.pipeline.backoff import Backoff
from consumer.pipeline.fetch import SafeFetch, Unreadable

TP = TopicPartition("req", 0)


class _Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Consumer:
    """Holds a partition log; offsets in ``bad`` raise like aiokafka decoding a broken batch."""

    def __init__(self, size: int, bad: set[int], error: Exception | None = None) -> None:
        self.size, self.bad, self.error = size, bad, error
        self.pos = 0

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def paused(self) -> set[TopicPartition]:
        return set()

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos = offset

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        if self.error is not None:
            raise self.error
        out: list[Any] = []
        while self.pos < self.size and len(out) < max_records:
            if self.pos in self.bad:
                if out:
                    # aiokafka loses what it decoded in the failing call: the
                    # position does not move.
                    self.pos = out[0].offset
                raise UnsupportedCodecError("snappy")
            out.append(_Record(self.pos))
            self.pos += 1
        return {TP: out} if out else {}


async def test_every_good_record_comes_back_and_the_bad_ones_as_unreadable_in_order() -> None:
    consumer = _Consumer(size=8, bad={2, 3, 6})
    metrics = Metrics()
    fetch = SafeFetch(consumer, metrics)  # type: ignore[arg-type]
    seen: list[Any] = []
    for _ in range(10):
        for records in (await fetch.getmany(timeout_ms=0, max_records=100)).values():
            seen.extend(records)
    assert [r.offset for r in seen] == list(range(8))
    assert [type(r) is Unreadable for r in seen] == [i in {2, 3, 6} for i in range(8)]
    assert all(r.error == "UnsupportedCodecError" for r in seen if isinstance(r, Unreadable))
    assert metrics.registry.get_sample_value("texteval_fetch_errors_total", {"kind": "undecodable_record"}) == 3
    assert fetch.failing is None


async def test_an_error_that_is_not_the_records_fault_is_retried_and_reported() -> None:
    consumer = _Consumer(size=3, bad=set(), error=TopicAuthorizationFailedError())
    fetch = SafeFetch(consumer, Metrics(), backoff=Backoff(0, 0))  # type: ignore[arg-type]
    assert await fetch.getmany(timeout_ms=0, max_records=10) == {}
    assert fetch.failing == "TopicAuthorizationFailedError" and consumer.pos == 0  # nothing skipped
    consumer.error = None
    got = await fetch.getmany(timeout_ms=0, max_records=10)
    assert [r.offset for r in got[TP]] == [0, 1, 2] and fetch.failing is None


async def test_a_stopped_consumer_is_not_mistaken_for_a_bad_record() -> None:
    fetch = SafeFetch(_Consumer(size=1, bad=set(), error=ConsumerStoppedError()), Metrics())  # type: ignore[arg-type]
    with pytest.raises(ConsumerStoppedError):
        await fetch.getmany(timeout_ms=0, max_records=10)
