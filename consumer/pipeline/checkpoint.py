"""The one checkpoint: what makes the consumer's progress durable, in its one order.

    sinks flushed -> job state saved -> offsets committed

Each step depends on the one before it: the job state counts only items
whose sends the broker acknowledged (so the outputs are flushed first), and
an offset is never committed ahead of the job state that explains it (so the
state is written, and acknowledged, before the offsets move). The offsets
are the tracker's (``offsets.OffsetTracker``): one past the contiguous
prefix of done records, never a bare ``commit()`` (that would commit the
fetch position, past jobs still in flight).

Three callers, one sequence (quix-streams' ``checkpointing/checkpoint.py`` is
the anchor): the timer (``run``), a revoke (``release``: bounded, only the
revoked partitions' offsets, then their state forgotten) and the drain
(``commit``). A failed step leaves the rest for the next checkpoint: the
offsets stay behind, records are redelivered, at-least-once holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from consumer.metrics import Metrics
    from consumer.pipeline.jobstate import Ledger
    from consumer.pipeline.offsets import OffsetTracker
    from consumer.pipeline.sinks import Sinks

logger = logging.getLogger(__name__)


class Checkpoint:
    def __init__(
        self, consumer: AIOKafkaConsumer, sinks: Sinks, ledger: Ledger, tracker: OffsetTracker[TopicPartition],
        metrics: Metrics, *, interval_s: float,
    ) -> None:  # fmt: skip
        """``tracker``: the offsets of the records that are done (``work.Work`` keeps it)."""
        self._consumer, self._sinks, self._ledger, self._metrics = consumer, sinks, ledger, metrics
        self._tracker = tracker
        self._interval_s = interval_s

    async def run(self) -> None:
        """A checkpoint on a short timer (cancel to stop)."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.commit()
            except KafkaError as exc:  # e.g. a rebalance in progress: the next turn retries
                logger.warning("commit failed: %r", exc)
            self._update_lag()

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """The three steps, in order; ``only``: commit the offsets of these partitions alone."""
        await self._sinks.flush()
        await self._save_and_commit(only)

    async def release(self, revoked: set[TopicPartition], timeout_s: float) -> None:
        """On revoke: the same steps, each bounded by ``timeout_s`` (a rebalance must finish
        whatever the broker does), then the partitions' offsets and job state are forgotten:
        they are the next owner's."""
        # What the aborted jobs already sent gets its acknowledgements first,
        # so the job state counts it: the next owner regrades only what was
        # still in the engine, not what was published a moment ago.
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._sinks.flush()
        try:
            async with asyncio.timeout(timeout_s):
                await self._save_and_commit(revoked)
        except (KafkaError, TimeoutError) as exc:
            logger.warning("commit on revoke failed: %r", exc)
        self._tracker.drop(revoked)
        self._ledger.forget(tp.partition for tp in revoked)
        for tp in revoked:
            with contextlib.suppress(KeyError):
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def _save_and_commit(self, only: set[TopicPartition] | None) -> None:
        offsets = self._tracker.committable()
        if only is not None:
            offsets = {tp: offset for tp, offset in offsets.items() if tp in only}
        await self._ledger.save()
        if not offsets:
            return
        started = time.perf_counter()
        await self._consumer.commit(offsets)
        self._metrics.commit_latency_seconds.observe(time.perf_counter() - started)
        self._tracker.mark_committed(offsets)

    def _update_lag(self) -> None:
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            if end is None:
                continue
            committed = self._tracker.committed(tp)
            behind = end - committed if committed is not None else self._tracker.pending(tp)
            self._metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, behind))
