"""One job from acceptance to its ``complete`` event.

The job hands its items to the process's ``Scheduler``, which feeds them to
the engine a slot at a time, interleaved with the other jobs' by its policy.
Finished items come back on a queue that one coroutine drains, so the job's
messages leave in a single, ordered stream:

    accepted -> result, result, ... -> batch_complete -> ... -> complete

A ``batch_complete`` goes out after ``batch_size`` new results, or when the
oldest unreported result has waited ``flush_s``. The job is done only when
the broker has acknowledged every message it produced; only then may its
offset be committed. However the job ends (done, failed, cancelled by a
revoke or a shutdown), its items leave the scheduler at once.

Grades are worth more than sends: when a send fails (``DeliveryFailed``: the
broker unreachable past the producer's retries), the run fails, but the outcomes it computed and
could not get acknowledged stay in ``unacked``; the retry of the same record
is given them (``carried``) and publishes them again without grading them.

ETAs (``accepted`` and every progress event) come from the scheduler: the
job's share of the engine given the jobs it shares it with now, not the
whole engine's rate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, replace

from consumer.contract import (
    AcceptedData,
    AcceptedEvent,
    BatchCompleteData,
    BatchCompleteEvent,
    CancelledData,
    CancelledEvent,
    CompleteData,
    CompleteEvent,
    ErrorCode,
    EvaluationResult,
    ItemStatus,
    ProgressFigures,
)
from consumer.engine.base import GradeOutcome, GradingEngine
from consumer.metrics import NO_ERROR_CODE, Metrics, job_size_bucket
from consumer.pipeline.decisions import DecisionLog
from consumer.pipeline.intake import Job
from consumer.pipeline.jobstate import Progress
from consumer.pipeline.results import build_result, build_summary
from consumer.pipeline.scheduler import Scheduler, Ticket
from consumer.pipeline.sinks import Sinks
from consumer.tenants import tenant_of

logger = logging.getLogger(__name__)


_ENGINE_FAULTS = frozenset({ErrorCode.ENGINE_ERROR, ErrorCode.ENGINE_TIMEOUT})


def _flagged(outcome: GradeOutcome) -> int | None:
    """1 or 0 for a result that carries a grade distribution (contract 1.2), else None."""
    sure = outcome.grade_confidence
    return None if sure is None else int(sure.needs_review)


def _add(count: int | None, more: int | None) -> int | None:
    """A ``needs_review`` count: it stays None (absent) until some result carried a distribution."""
    return count if more is None else (count or 0) + more


_ABORT_SEND_TIMEOUT_S = 1.0  # an aborted run's last progress event: sent now or not at all


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
    carried: bool = False  # graded by an earlier run whose delivery failed: only published again


class JobRun:
    def __init__(
        self,
        job: Job,
        *,
        engine: GradingEngine,
        sinks: Sinks,
        metrics: Metrics,
        scheduler: Scheduler,
        batch_size: int,
        flush_s: float,
        request_bytes: int = 0,
        resume: Progress | None = None,
        carried: Mapping[int, GradeOutcome] | None = None,
        decisions: DecisionLog | None = None,
        read_back_since_ms: int | None = None,
    ) -> None:
        """``decisions``: where grade records go (contract 1.3; None: none written).
        ``read_back_since_ms``: a job taken over from another run: the records
        written since then (the request's time) are read first, so an item
        regraded here is not recorded twice (pipeline/decisions.py)."""
        self.job = job
        self.request_bytes = request_bytes  # admission bounds memory by this too
        self._engine = engine
        self._sinks = sinks
        self._metrics = metrics
        self._scheduler = scheduler
        self._ticket: Ticket | None = None
        self._batch_size = batch_size
        self._flush_s = flush_s
        self._finished: asyncio.Queue[_Finished | None] = asyncio.Queue()  # None: cancel requested
        self.remaining = len(job.items)  # items not yet back from the engine
        # Resumed (contract 1.1): what an earlier owner got acknowledged is not graded again,
        # and every count covers the whole job.
        self._prior = prior = resume or Progress()  # what earlier runs got acknowledged
        self.resumed_items = len(prior.done)
        self._acked = prior  # and this run too: items whose result and progress event the broker acknowledged
        # 1.2: ok results flagged needs_review, of the results this run sent; None until one carries a distribution.
        self._review_here: int | None = None
        # Outcomes graded and not yet acknowledged: a failed run leaves here
        # what its retry publishes without grading (``carried``).
        self._carried = {i: o for i, o in (carried or {}).items() if i not in prior.done}
        self.unacked: dict[int, GradeOutcome] = dict(self._carried)  # a retry that fails early keeps them
        self._started = time.monotonic()
        self.terminal: CompleteEvent | CancelledEvent | None = None  # the last event, once acknowledged
        self._cancel_requested = False
        self._decisions = decisions
        self._read_back_since_ms = read_back_since_ms
        self._recorded: asyncio.Task[frozenset[int]] | None = None

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def elapsed_s(self) -> float:
        """Grading time of the whole job, earlier owners included."""
        return self._prior.elapsed_s + time.monotonic() - self._started

    @property
    def progress(self) -> Progress:
        """What the broker acknowledged so far, earlier owners included: what the job state keeps."""
        return replace(self._acked, elapsed_s=self.elapsed_s)

    def request_cancel(self) -> None:
        """Stop grading: the job ends with a ``cancelled`` event (contract 1.1)."""
        if not self._cancel_requested:
            self._cancel_requested = True
            if self._ticket is not None:
                self._scheduler.release(self._ticket)  # waiting items dropped, engine work aborted
            self._finished.put_nowait(None)

    async def run(self) -> None:
        job, total = self.job, len(self.job.items)
        started = self._started = time.monotonic()
        acks: list[Awaitable[object]] = []
        todo = [i for i in range(total) if i not in self._acked.done]
        to_grade = [i for i in todo if i not in self._carried]
        self.remaining = len(to_grade)
        self._ticket = ticket = self._scheduler.submit(job.job_id, job.items, self._graded, indices=to_grade)
        if self._carried:
            logger.info("job retried: job_id=%s results sent again without grading=%d", job.job_id,
                        len(self._carried))  # fmt: skip
        for index, outcome in self._carried.items():
            self._finished.put_nowait(_Finished(index, outcome, time.monotonic(), carried=True))
        if self._decisions is not None and self._read_back_since_ms is not None:
            # Read while the first items are graded; the first record waits for it.
            self._recorded = asyncio.create_task(self._decisions.recorded(job.job_id, self._read_back_since_ms))
        try:
            eta_s = round(self._scheduler.estimate_s(ticket), 1)
            accepted = AcceptedData(
                total_items=total, estimated_time_seconds=eta_s, resumed_items=self.resumed_items or None
            )
            acks.append(await self._sinks.progress(AcceptedEvent(job_id=job.job_id, data=accepted)))
            ok, failed = await self._stream(len(todo), acks, started)
            done = self.resumed_items + ok + failed
            terminal: CompleteEvent | CancelledEvent
            if self._cancel_requested:
                terminal = CancelledEvent(
                    job_id=job.job_id,
                    data=CancelledData(
                        total_items=total, completed=done, succeeded=self._prior.succeeded + ok,
                        failed=self._prior.failed + failed, total_time_seconds=round(self.elapsed_s, 3),
                    ),
                )  # fmt: skip
            else:
                terminal = CompleteEvent(
                    job_id=job.job_id,
                    data=CompleteData(
                        total_processed=total, succeeded=self._prior.succeeded + ok,
                        failed=self._prior.failed + failed, total_time_seconds=round(self.elapsed_s, 3),
                        needs_review=_add(self._prior.needs_review, self._review_here),
                    ),
                )  # fmt: skip
            acks.append(await self._sinks.progress(terminal))
            # Done means acknowledged: only now may the offset be committed.
            await asyncio.gather(*acks)
            self.terminal = terminal
        finally:
            # Revoke, shutdown or failure: the job's waiting items leave the
            # scheduler and its engine work is aborted, at once.
            self._scheduler.release(ticket)
            if self._recorded is not None and not self._recorded.done():
                self._recorded.cancel()
        self._metrics.job_duration_seconds.labels(size=job_size_bucket(total)).observe(time.monotonic() - started)
        logger.info("job %s: job_id=%s items=%d resumed=%d s=%.2f", terminal.event.value, job.job_id, total,
                    self.resumed_items, time.monotonic() - started)  # fmt: skip

    def _graded(self, index: int, outcome: GradeOutcome) -> None:
        """The scheduler's delivery of one finished item."""
        self.remaining -= 1
        # Only an engine fault can mean the engine is gone; asking on every
        # error would query the GPU once per invalid or too-long text.
        engine_gone = (
            outcome.error is not None and outcome.error.code in _ENGINE_FAULTS and not self._engine.health().loaded
        )
        if not engine_gone:
            self.unacked[index] = outcome  # graded: never graded again by this process, whatever happens next
        self._finished.put_nowait(_Finished(index, outcome, time.monotonic(), engine_gone))

    async def _stream(self, todo: int, acks: list[Awaitable[object]], started: float) -> tuple[int, int]:
        """Publish results as they finish, with a progress event per batch; returns (ok, failed) of this run."""
        received = succeeded = batch_number = 0
        pending: list[_Finished] = []
        result_acks: dict[int, asyncio.Future[object]] = {}
        cancelled = False
        try:
            while received < todo and not cancelled:
                # Wait for the next result, but no longer than the oldest
                # unreported one may wait for its progress event.
                timeout = pending[0].ready_at + self._flush_s - time.monotonic() if pending else None
                finished: _Finished | None = None
                try:
                    async with asyncio.timeout(None if timeout is None else max(0.0, timeout)):
                        finished = await self._finished.get()
                        cancelled = finished is None
                except TimeoutError:
                    pass
                if finished is not None and finished.engine_gone:
                    raise EngineUnavailable(self._engine.health().detail)
                if finished is not None:
                    if self._recorded is not None:
                        # Before any result goes out: a result sent while the read-back is
                        # still running would wait unacknowledged, and a revoke in that
                        # window would have it graded (and published) again.
                        await self._recorded
                    ack = await self._sinks.result(self._result(finished))
                    if (record_ack := await self._record(finished)) is not None:
                        # Acknowledged together: a released grade always has its record.
                        ack = asyncio.gather(ack, record_ack)
                    # Counted once sent: an abort during the send leaves it out of the figures.
                    received += 1
                    succeeded += finished.outcome.status is ItemStatus.OK
                    self._review_here = _add(self._review_here, _flagged(finished.outcome))
                    result_acks[finished.index] = ack
                    acks.append(ack)
                    if not finished.carried:  # counted when it was graded
                        self._observe(finished.outcome)
                    pending.append(finished)
                if pending and (finished is None or len(pending) >= self._batch_size or received == todo or cancelled):
                    acks.append(await self._report(batch_number + 1, pending, received, result_acks, started))
                    batch_number += 1
                    pending = []
        except asyncio.CancelledError:
            # Aborted (revoke, shutdown): the results already sent get their
            # progress event too, so the job state can count them and the
            # next owner does not grade them again. Best effort, bounded: the
            # abort itself must not wait on a broker in trouble, nor turn
            # into a delivery failure.
            if pending:
                try:
                    async with asyncio.timeout(_ABORT_SEND_TIMEOUT_S):
                        await self._report(batch_number + 1, pending, received, result_acks, started)
                except Exception as exc:  # noqa: BLE001 - these items are simply graded again by the next owner
                    logger.warning("abort of job_id=%s: last progress event not sent (%s)", self.job.job_id,
                                   type(exc).__name__)  # fmt: skip
            raise
        return succeeded, received - succeeded

    async def _report(self, number: int, batch: list[_Finished], received: int,
                      result_acks: dict[int, asyncio.Future[object]], started: float) -> Awaitable[object]:  # fmt: skip
        """The batch's progress event; its items are acknowledged once it and their results are."""
        ack = await self._send_batch(number, batch, self.resumed_items + received, len(self.job.items), started)
        self._track(batch, [result_acks.pop(f.index) for f in batch], ack)
        return ack

    def _track(self, batch: list[_Finished], results: list[asyncio.Future[object]], event: Awaitable[object]) -> None:
        """An item counts as acknowledged (the job state keeps it) once its result and progress event both are."""
        both = asyncio.gather(*results, event)

        def acknowledged(fut: asyncio.Future[list[object]]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                return  # not acknowledged: the item is graded again by whoever resumes the job
            ok, review = 0, None
            for f in batch:
                self.unacked.pop(f.index, None)
                if f.outcome.status is ItemStatus.OK:
                    ok += 1
                    review = _add(review, _flagged(f.outcome))
            self._acked = self._acked.acknowledged(
                (f.index for f in batch), succeeded=ok, failed=len(batch) - ok, needs_review=review
            )

        both.add_done_callback(acknowledged)

    async def _record(self, finished: _Finished) -> Awaitable[object] | None:
        """The grade's decision record (contract 1.3), unless an earlier run wrote it."""
        outcome = finished.outcome
        if self._decisions is None or outcome.status is not ItemStatus.OK:
            return None
        if self._recorded is not None and finished.index in await self._recorded:
            return None
        item = self.job.items[finished.index]
        return await self._decisions.send(self.job.job_id, finished.index, item, outcome)

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
        graded_here = done - self.resumed_items
        per_item = elapsed / graded_here if graded_here else 0.0
        remaining_s = self._scheduler.estimate_s(self._ticket) if self._ticket is not None and done < total else 0.0
        summaries = [build_summary(item_index=f.index, item=self.job.items[f.index], outcome=f.outcome) for f in batch]
        figures = ProgressFigures(
            completed=done,
            total=total,
            percentage=round(100.0 * done / total, 2),
            elapsed_seconds=round(self.elapsed_s, 3),
            estimated_remaining_seconds=round(remaining_s, 3),
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

    def _observe(self, outcome: GradeOutcome) -> None:
        code = outcome.error.code if outcome.error else NO_ERROR_CODE
        self._metrics.items_graded.labels(status=outcome.status, error_code=code).inc()
        if outcome.nota is not None:  # grades by model, for the drift alerts (contract 1.2)
            sure = outcome.grade_confidence
            confidence, review = (sure.confidence, sure.needs_review) if sure else (None, None)
            self._metrics.observe_grade(self._engine.model_name, outcome.nota, confidence, review)
            if outcome.review_reasons is not None:
                self._metrics.observe_reasons(tenant_of(self.job_id), outcome.review_reasons)
        self._metrics.item_latency_seconds.observe(outcome.latency_ms / 1000.0)
        self._metrics.generated_tokens.inc(outcome.output_tokens)
        self._metrics.prompt_tokens.inc(outcome.prompt_tokens)
        self._metrics.prompt_cached_tokens.inc(outcome.cached_prompt_tokens)
