"""Fetching requests so that no record can stop the consumer.

aiokafka decodes record batches lazily, inside ``getmany``: a batch it cannot
decode (an unknown or missing codec, a bad CRC, a corrupt record) raises from
``getmany`` every time, the position never moves, and before this module one
such record crash-looped the whole partition. Here a decoding error is the
record's fault and is moved past:

1. the partitions are read again one record at a time, so every good record
   before the bad one is returned and the position stops exactly on it;
2. the bad offset comes back as an ``Unreadable`` stand-in record (no key, no
   value: the client could not read them), which the app dead-letters with
   its coordinates, and the position moves one past it.

Errors that are not the record's fault (authorization, an unknown topic, a
broker that fails the fetch) are never moved past: the fetch is retried
after a back-off (longer while it keeps failing) and ``failing`` says why,
for ``/health``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aiokafka.errors import (
    ConsumerStoppedError,
    CorruptRecordException,
    IllegalStateError,
    KafkaError,
    RecordTooLargeError,
    UnsupportedCodecError,
)

from consumer.pipeline.backoff import Backoff

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from consumer.metrics import Metrics

logger = logging.getLogger(__name__)

# Raised while decoding a fetched batch: the bytes are at fault, not the
# broker. Anything that is not a KafkaError is a decoder failing on bytes
# too (aiokafka's record parsers raise ValueError, struct.error, zlib and
# cramjam errors, ...).
_DECODE_ERRORS: tuple[type[KafkaError], ...] = (UnsupportedCodecError, CorruptRecordException)
# The consumer's own state, not the bytes: these go up to the caller.
_LIFECYCLE_ERRORS = (ConsumerStoppedError, IllegalStateError, AssertionError)
# 1 s, then up to 5 s while the broker keeps refusing: soon back after a
# blip, and a long outage is not hammered.
FETCH_BACKOFF = Backoff(first_s=1.0, max_s=5.0)


def _is_decode_error(exc: Exception) -> bool:
    if isinstance(exc, _LIFECYCLE_ERRORS):
        raise exc
    return isinstance(exc, _DECODE_ERRORS) or not isinstance(exc, KafkaError)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Stands in for a record the client could not decode (same attributes as a ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    error: str  # the exception's type name: never its message, which may quote bytes
    timestamp: int = -1
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


Fetched = dict["TopicPartition", list[Any]]  # ConsumerRecord or Unreadable, in offset order


class FetchError(StrEnum):
    """The `kind` label of texteval_fetch_errors."""

    UNDECODABLE_RECORD = "undecodable_record"  # moved past, to the DLT
    FETCH_FAILED = "fetch_failed"  # not a record's fault: retried
    # Skipped by aiokafka, so also counted as a dead letter (its `reason`): no record to send.
    TOO_LARGE_TO_FETCH = "too_large_to_fetch"


class SafeFetch:
    def __init__(self, consumer: AIOKafkaConsumer, metrics: Metrics, *, backoff: Backoff = FETCH_BACKOFF) -> None:
        self._consumer = consumer
        self._metrics = metrics
        metrics.expect(metrics.fetch_errors, FetchError)
        metrics.expect(metrics.dead_letters, [FetchError.TOO_LARGE_TO_FETCH])
        self._backoff = backoff
        self.failing: str | None = None  # why fetching fails (not a record's fault), for /health
        self._failing_since: float | None = None
        self._failures = 0  # fetches failed in a row

    @property
    def failing_for_s(self) -> float:
        return 0.0 if self._failing_since is None else time.monotonic() - self._failing_since

    async def getmany(self, *, timeout_ms: int, max_records: int) -> Fetched:
        try:
            batches: Fetched = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except RecordTooLargeError as exc:
            # A broker that truncates a record past the fetch limit (instead
            # of returning it whole, KIP-74) makes it unreadable: aiokafka
            # skips it. Say so loudly; the loop goes on behind it.
            logger.error("request record too large to fetch, skipped: %s", type(exc).__name__)
            self._metrics.fetch_errors.labels(kind=FetchError.TOO_LARGE_TO_FETCH).inc()
            self._metrics.dead_letters.labels(reason=FetchError.TOO_LARGE_TO_FETCH).inc()
            return {}
        except Exception as exc:  # noqa: BLE001 - sorted by _is_decode_error; lifecycle errors re-raised
            if not _is_decode_error(exc):
                await self._not_the_records_fault(exc)
                return {}
            logger.error("undecodable record batch (%s): reading record by record to isolate it", type(exc).__name__)
            return await self._one_by_one(max_records)
        self._recovered()
        return batches

    async def _one_by_one(self, max_records: int) -> Fetched:
        fetched: Fetched = {}
        for tp in self._consumer.assignment() - self._consumer.paused():
            entries: list[Any] = []
            # The first answer may be empty: aiokafka drops the batch that
            # failed and fetches it again.
            empty = 0
            while len(entries) < max_records and empty < 2:
                try:
                    got = await self._consumer.getmany(tp, timeout_ms=100, max_records=1)
                except Exception as exc:  # noqa: BLE001 - as above
                    if not _is_decode_error(exc):
                        await self._not_the_records_fault(exc)
                        break
                    entries.append(await self._skip(tp, exc))
                    continue
                if not got.get(tp):
                    empty += 1
                    continue
                empty = 0
                entries.extend(got[tp])
            if entries:
                fetched[tp] = entries
        return fetched

    async def _skip(self, tp: TopicPartition, exc: Exception) -> Unreadable:
        # One record at a time, the position stands on the first record not
        # returned: the one that cannot be decoded.
        offset = await self._consumer.position(tp)
        self._consumer.seek(tp, offset + 1)
        kind = type(exc).__name__
        logger.error("undecodable record skipped to the DLT: %s:%d:%d (%s)", tp.topic, tp.partition, offset, kind)
        self._metrics.fetch_errors.labels(kind=FetchError.UNDECODABLE_RECORD).inc()
        return Unreadable(tp.topic, tp.partition, offset, kind)

    async def _not_the_records_fault(self, exc: Exception) -> None:
        kind = type(exc).__name__
        if self.failing != kind:
            logger.error("fetching requests fails (%s); retrying, nothing is skipped", kind)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self.failing = kind
        self._metrics.fetch_errors.labels(kind=FetchError.FETCH_FAILED).inc()
        self._failures += 1
        await asyncio.sleep(self._backoff.delay_s(self._failures))

    def _recovered(self) -> None:
        if self.failing is not None:
            logger.info("fetching requests works again after %.1f s", self.failing_for_s)
        self.failing = None
        self._failing_since = None
        self._failures = 0
