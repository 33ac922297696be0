"""One job from acceptance to its ``complete`` event.

Every item goes to the engine at once (the engine batches whatever is in
flight, across jobs). Finished items arrive on a queue that one coroutine
drains, so the job's messages leave in a single, ordered stream:

    accepted -> result, result, ... -> batch_complete -> ... -> complete

A ``batch_complete`` goes out after ``batch_size`` new results, or when the
oldest unreported result has waited ``flush_s``. The job is done only when
the broker has acknowledged every message it produced; only then may its
offset be committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from consumer.contract import (
    AcceptedData,
    AcceptedEvent,
    BatchCompleteData,
    BatchCompleteEvent,
    CompleteData,
    CompleteEvent,
    ErrorCode,
    EvaluationResult,
    ItemStatus,
    ItemSummary,
    ProgressFigures,
)
from consumer.engine.base import GradeOutcome, GradingEngine
from consumer.metrics import Metrics
from consumer.pipeline.intake import Job
from consumer.pipeline.results import build_result
from consumer.pipeline.sinks import Sinks

logger = logging.getLogger(__name__)


class ThroughputMeter:
    """Items per second over the whole engine, for the ``accepted`` ETA."""

    def __init__(self, initial_items_per_s: float = 2.0, smoothing: float = 0.05) -> None:
        self._rate = initial_items_per_s
        self._alpha = smoothing
        self._last: float | None = None

    def record(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._rate += self._alpha * (1.0 / (now - self._last) - self._rate)
        self._last = now

    def estimate_s(self, items: int) -> float:
        return items / max(self._rate, 1e-6)


_ENGINE_FAULTS = frozenset({ErrorCode.ENGINE_ERROR, ErrorCode.ENGINE_TIMEOUT})


class EngineUnavailable(RuntimeError):
    """The engine died under this job.

    Its items did not fail, the engine did: publishing ``engine_error``
    results would replace their grades for good. The job fails instead, its
    offset stays uncommitted, and it is graded again after a restart.
    """


@dataclass(frozen=True, slots=True)
class _Finished:
    index: int
    outcome: GradeOutcome
    ready_at: float
    engine_gone: bool = False  # the engine died while grading it


class JobRun:
    def __init__(
        self,
        job: Job,
        *,
        engine: GradingEngine,
        sinks: Sinks,
        metrics: Metrics,
        meter: ThroughputMeter,
        batch_size: int,
        flush_s: float,
    ) -> None:
        self.job = job
        self._engine = engine
        self._sinks = sinks
        self._metrics = metrics
        self._meter = meter
        self._batch_size = batch_size
        self._flush_s = flush_s
        self._finished: asyncio.Queue[_Finished] = asyncio.Queue()
        self.remaining = len(job.items)  # items not yet back from the engine

    async def run(self) -> None:
        job, total = self.job, len(self.job.items)
        started = time.monotonic()
        acks: list[Awaitable[object]] = []
        accepted = AcceptedData(total_items=total, estimated_time_seconds=round(self._meter.estimate_s(total), 1))
        acks.append(await self._sinks.progress(AcceptedEvent(job_id=job.job_id, data=accepted)))
        grading = [asyncio.create_task(self._grade(i)) for i in range(total)]
        try:
            succeeded = await self._stream(total, acks, started)
            complete = CompleteData(
                total_processed=total,
                succeeded=succeeded,
                failed=total - succeeded,
                total_time_seconds=round(time.monotonic() - started, 3),
            )
            acks.append(await self._sinks.progress(CompleteEvent(job_id=job.job_id, data=complete)))
            # Done means acknowledged: only now may the offset be committed.
            await asyncio.gather(*acks)
        finally:
            for task in grading:
                task.cancel()  # revoke or shutdown: abort the engine work
        logger.info("job complete: job_id=%s items=%d ok=%d s=%.2f", job.job_id, total, succeeded,
                    time.monotonic() - started)  # fmt: skip

    async def _grade(self, index: int) -> None:
        item = self.job.items[index]
        self._metrics.engine_in_flight.inc()
        try:
            outcome = await self._engine.grade(item, request_id=f"{self.job.job_id}#{index}")
        finally:
            self._metrics.engine_in_flight.dec()
        self.remaining -= 1
        # Only an engine fault can mean the engine is gone; asking on every
        # error would query the GPU once per invalid or too-long text.
        engine_gone = (
            outcome.error is not None and outcome.error.code in _ENGINE_FAULTS and not self._engine.health().loaded
        )
        self._finished.put_nowait(_Finished(index, outcome, time.monotonic(), engine_gone))

    async def _stream(self, total: int, acks: list[Awaitable[object]], started: float) -> int:
        """Publish results as they finish, with a progress event per batch; returns the ok count."""
        received = succeeded = batch_number = 0
        pending: list[_Finished] = []
        while received < total:
            # Wait for the next result, but no longer than the oldest
            # unreported one may wait for its progress event.
            timeout = pending[0].ready_at + self._flush_s - time.monotonic() if pending else None
            finished: _Finished | None = None
            try:
                async with asyncio.timeout(None if timeout is None else max(0.0, timeout)):
                    finished = await self._finished.get()
            except TimeoutError:
                pass
            if finished is not None and finished.engine_gone:
                raise EngineUnavailable(self._engine.health().detail)
            if finished is not None:
                received += 1
                succeeded += finished.outcome.status is ItemStatus.OK
                acks.append(await self._sinks.result(self._result(finished)))
                self._observe(finished.outcome, finished.ready_at)
                pending.append(finished)
            if pending and (finished is None or len(pending) >= self._batch_size or received == total):
                batch_number += 1
                acks.append(await self._send_batch(batch_number, pending, received, total, started))
                pending = []
        return succeeded

    def _result(self, finished: _Finished) -> EvaluationResult:
        return build_result(
            job_id=self.job.job_id,
            item_index=finished.index,
            item=self.job.items[finished.index],
            outcome=finished.outcome,
            engine=self._engine,
        )

    async def _send_batch(
        self, number: int, batch: list[_Finished], done: int, total: int, started: float
    ) -> Awaitable[object]:
        elapsed = time.monotonic() - started
        per_item = elapsed / done if done else 0.0
        summaries = [
            ItemSummary(
                id_alumno=self.job.items[f.index].id_alumno,
                item_index=f.index,
                status=f.outcome.status,
                nota=f.outcome.nota,
                feedback=f.outcome.feedback,
            )
            for f in batch
        ]
        figures = ProgressFigures(
            completed=done,
            total=total,
            percentage=round(100.0 * done / total, 2),
            elapsed_seconds=round(elapsed, 3),
            estimated_remaining_seconds=round(per_item * (total - done), 3),
            avg_time_per_item=round(per_item, 4),
        )
        event = BatchCompleteEvent(
            job_id=self.job.job_id, data=BatchCompleteData(batch_number=number, results=summaries, progress=figures)
        )
        ack = await self._sinks.progress(event)
        ready = [f.ready_at for f in batch]
        histogram = self._metrics.progress_event_latency_seconds

        def observe(_: object) -> None:
            now = time.monotonic()
            for ready_at in ready:
                histogram.observe(now - ready_at)

        ack.add_done_callback(observe)
        return ack

    def _observe(self, outcome: GradeOutcome, ready_at: float) -> None:
        code = outcome.error.code.value if outcome.error else ""
        self._metrics.items_graded.labels(status=outcome.status.value, error_code=code).inc()
        self._metrics.item_latency_seconds.observe(outcome.latency_ms / 1000.0)
        self._metrics.generated_tokens.inc(outcome.output_tokens)
        self._metrics.prompt_tokens.inc(outcome.prompt_tokens)
        self._metrics.prompt_cached_tokens.inc(outcome.cached_prompt_tokens)
        self._meter.record(ready_at)
