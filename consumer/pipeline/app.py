"""The consumer loop: poll, start what admission lets start, commit what is done.

    poll -> admission -> intake -> job state (ledger) -> JobRun -> done -> commit

The loop never waits on the engine: it keeps polling (so the group membership
stays alive through long GPU jobs) and starts every job it has room for at
once, so the engine batches across jobs. Offsets are committed on a timer,
one past the contiguous prefix of done records (``offsets``): a crash
re-delivers unfinished jobs (at-least-once; ``result_id`` dedups). How a
record's work ends decides what follows: done (committable), the engine died
(stop; the process is restarted), ``DeliveryFailed`` (run again after its own
back-off, ``redelivery``), or a bug (the DLT as ``internal_error``; the loop
goes on). Each other concern has its helper: ``SafeFetch``, ``Admission``
(caps, backlog, pausing), ``Rebalance``, ``DeadLetters``, ``Watchdog``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from consumer.health import HealthReport
from consumer.pipeline.admission import Admission
from consumer.pipeline.backoff import Backoff
from consumer.pipeline.dead_letters import DeadLetters
from consumer.pipeline.decisions import DecisionLog
from consumer.pipeline.fetch import SafeFetch
from consumer.pipeline.inflight import InFlight, Work
from consumer.pipeline.intake import Job, Rejection, RejectReason
from consumer.pipeline.jobs import EngineUnavailable, JobRun
from consumer.pipeline.jobstate import Action, Plan
from consumer.pipeline.offsets import Committer, OffsetTracker
from consumer.pipeline.rebalance import Rebalance
from consumer.pipeline.redelivery import Redeliveries
from consumer.pipeline.shadow import unsampled
from consumer.pipeline.sinks import DeliveryFailed
from consumer.pipeline.watchdog import Watchdog

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from consumer.engine.base import GradingEngine
    from consumer.metrics import Metrics
    from consumer.pipeline.control import ControlReader
    from consumer.pipeline.jobstate import Ledger
    from consumer.pipeline.scheduler import Scheduler
    from consumer.pipeline.sinks import Sinks
    from consumer.settings import Settings

logger = logging.getLogger(__name__)


class ConsumerApp:
    def __init__(
        self, consumer: AIOKafkaConsumer, sinks: Sinks, engine: GradingEngine, metrics: Metrics, settings: Settings,
        *, scheduler: Scheduler, ledger: Ledger, control: ControlReader, decisions: DecisionLog | None = None,
    ) -> None:  # fmt: skip
        self._consumer, self._sinks, self._engine, self._metrics = consumer, sinks, engine, metrics
        self._settings = settings
        self._ledger = ledger  # job state: what a request gets; written before every offset commit
        self._control = control  # cancel commands
        self._decisions = decisions  # grade records (contract 1.3); None: not written
        self.scheduler = scheduler  # between the job runs and the engine: decides what the engine runs next
        metrics.expect_dead_letter_reasons([*RejectReason, "too_large_to_fetch"])
        metrics.expect_model(engine.model_name)
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._committer = Committer(
            consumer, self._tracker, metrics, interval_s=settings.commit_interval_ms / 1000, before_commit=ledger.save
        )
        self._fetch = SafeFetch(consumer, metrics)
        self._dead_letters = DeadLetters(sinks, metrics)
        retry = Backoff(settings.delivery_retry_backoff_s, settings.delivery_retry_backoff_max_s)
        self._redelivery = Redeliveries(retry)  # records whose output could not be sent
        self._inflight = InFlight()
        outputs = (settings.results_topic, settings.progress_topic, settings.dlt_topic, settings.checkpoints_topic)
        self._watchdog = Watchdog(
            consumer, engine, metrics, output_topics=outputs, interval_s=settings.kafka_check_interval_s,
            on_engine_died=self._engine_died, is_member=lambda: self._rebalance.member,
        )  # fmt: skip
        self._admission = Admission(
            consumer, metrics, settings, inflight=self._inflight, redelivery=self._redelivery,
            outputs_ok=lambda: self._watchdog.outputs_ok,
        )  # fmt: skip
        self._rebalance = Rebalance(
            inflight=self._inflight, admission=self._admission, redelivery=self._redelivery, sinks=sinks,
            committer=self._committer, ledger=ledger, timeout_s=settings.revoke_timeout_s,
        )  # fmt: skip
        self.engine_failed = False  # the engine died: stop, and let the process be restarted
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()

    # --- lifecycle -------------------------------------------------------

    async def run(self) -> None:
        """Consume until ``stop()``; then drain within the grace period."""
        self._consumer.subscribe([self._settings.requests_topic], listener=self._rebalance)
        await self._watchdog.check()  # know whether the output topics exist before grading anything
        timers = [asyncio.create_task(self._control.run(self._ledger.cancel, self._ledger.erase))]
        # Cancels of the last CANCEL_TTL_S first: a cancelled job's request must not start.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._control.ready.wait(), self._settings.revoke_timeout_s)
        timers += [asyncio.create_task(self._committer.run()), asyncio.create_task(self._watchdog.run())]
        try:
            while not self._stopping.is_set():
                self._admission.retry(self._redelivery.due())  # first: they probe the outputs
                while not self._stopping.is_set() and (head := self._admission.next(self._rebalance.loaded)):
                    self._start(*head)
                self._admission.apply_pause()
                batches = await self._fetch.getmany(timeout_ms=100, max_records=100)
                for tp, records in batches.items():
                    for record in records:
                        self._tracker.track(tp, record.offset)
                        self._admission.add(tp, record)
        finally:
            for timer in timers:
                timer.cancel()
            await self._drain()
            self._stopped.set()

    def stop(self) -> None:
        """Begin a graceful stop (signal handlers call this)."""
        if not self._stopping.is_set():
            logger.info("stopping: draining %d jobs", self.active_jobs)
            self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _drain(self) -> None:
        self._admission.drop()  # not started, not done: whoever owns the partition next takes them
        with contextlib.suppress(KafkaError, AssertionError):
            self._consumer.pause(*self._consumer.assignment())
        if late := await self._inflight.wait(self._settings.shutdown_grace_s):
            logger.warning("grace period over: aborting %d jobs", len(late))
            await self._inflight.cancel(late, self._settings.revoke_timeout_s)
        await self._sinks.flush()
        await self._committer.commit()

    @property
    def active_jobs(self) -> int:
        return self._inflight.jobs

    # --- starting work ---------------------------------------------------

    def _start(self, tp: TopicPartition, record: Any, parsed: Job | Rejection) -> None:
        if isinstance(parsed, Job):
            cancelled = self._control.is_cancelled(parsed.job_id)
            plan = self._ledger.plan(parsed, record.value or b"", tp.partition, record.offset, cancelled=cancelled)
            if plan.action.grades:
                self._grade(tp, record, parsed, plan)
                return
            logger.info("request %s:%d:%d: %s (no grading)", tp.topic, tp.partition, record.offset, plan.action.value)
            if plan.event is not None:  # republish, cancelled
                self._spawn(self._sinks.send_progress(plan.event), Work(tp, record))
                return
            if plan.rejection is None:  # skip: its original is running
                self._done(Work(tp, record))
                return
            parsed = plan.rejection
        logger.warning("dead letter: %s:%d:%d reason=%s", tp.topic, tp.partition, record.offset, parsed.reason)
        self._metrics.dead_letters.labels(reason=parsed.reason.value).inc()
        self._spawn(self._dead_letters.deliver(record, parsed), Work(tp, record, rejection=parsed))

    def _grade(self, tp: TopicPartition, record: Any, job: Job, plan: Plan) -> None:
        settings = self._settings
        resume = plan.state.progress if plan.state is not None else None
        if settings.shadow:  # a candidate grades only its sample (pipeline/shadow.py)
            resume = unsampled(job, resume, settings.shadow_sample_rate, self._metrics, self._engine.model_name)
        run = JobRun(
            job, engine=self._engine, sinks=self._sinks, metrics=self._metrics, scheduler=self.scheduler,
            batch_size=settings.batch_size, flush_s=settings.progress_flush_ms / 1000,
            request_bytes=len(record.value or b""), resume=resume,
            carried=self._redelivery.carried(tp, record.offset), decisions=self._decisions,
            read_back_since_ms=record.timestamp if plan.action is Action.RESUME else None,
        )  # fmt: skip
        logger.info("job accepted: job_id=%s items=%d offset=%d", job.job_id, len(job.items), record.offset)
        self._metrics.jobs_accepted.inc()
        lease = self._ledger.started(job.job_id, run)
        self._spawn(run.run(), Work(tp, record, run, lease))

    def _spawn(self, work_done: Coroutine[Any, Any, None], work: Work) -> None:
        task = asyncio.create_task(work_done)
        self._inflight.add(task, work)
        self._metrics.jobs_active.set(self._inflight.jobs)
        task.add_done_callback(self._finished)

    # --- how work ends ----------------------------------------------------

    def _finished(self, task: asyncio.Task[None]) -> None:
        work = self._inflight.pop(task)
        self._metrics.jobs_active.set(self._inflight.jobs)
        if work.lease is not None:
            self._ledger.ended(work.lease)  # its acknowledged items, or its terminal event, go to the job state
        if task.cancelled():
            return  # revoked or shut down: the record stays uncommitted
        if (error := task.exception()) is None:
            self._done(work)
        elif isinstance(error, EngineUnavailable):
            self._engine_died(str(error))  # the offset is not committed: graded again after the restart
        elif isinstance(error, DeliveryFailed):
            self._undelivered(work, error)
        else:
            self._internal_error(work, error)

    def _done(self, work: Work) -> None:
        self._tracker.mark_done(work.tp, work.record.offset)
        self._redelivery.delivered(work.tp, work.record.offset)  # its retry got through
        if work.run is not None:
            self._metrics.jobs_completed.inc()

    def _undelivered(self, work: Work, error: DeliveryFailed) -> None:
        """Run the record again after its back-off: duplicates, never loss; what was graded
        is sent again, not graded again (``carried``)."""
        where = f"{work.tp.topic}:{work.tp.partition}:{work.record.offset}"
        # Only while the record is ours: the next owner reads it again from the committed offset.
        if work.tp not in self._consumer.assignment() or self._stopping.is_set():
            logger.error("delivery failed (%s), record left to its next owner: %s", error, where)
            return
        delay_s = self._redelivery.failed(work.tp, work.record, work.run.unacked if work.run is not None else {})
        logger.error("delivery failed (%s), retry in %.1f s: %s", error, delay_s, where)

    def _internal_error(self, work: Work, error: BaseException) -> None:
        """A bug, not an outage: a retry would fail the same way for ever. The request goes to the
        DLT as ``internal_error`` (the type only: a message may quote a student's text)."""
        kind = type(error).__name__
        frames = "".join(traceback.format_tb(error.__traceback__))  # code locations, no values
        logger.error("internal error (%s) at %s:%d:%d\n%s", kind, work.tp.topic, work.tp.partition,
                     work.record.offset, frames)  # fmt: skip
        self._metrics.internal_errors.inc()
        if work.lease is not None:
            self._ledger.failed(work.lease)
        self._redelivery.delivered(work.tp, work.record.offset)
        if work.rejection is not None and work.rejection.reason is RejectReason.INTERNAL_ERROR:
            self._tracker.mark_done(work.tp, work.record.offset)  # the dead letter of a bug hit a bug: give up
            return
        self._start(work.tp, work.record, Rejection(RejectReason.INTERNAL_ERROR, kind))

    def _engine_died(self, detail: str) -> None:
        """The one path for a dead engine (seen by a job or the watchdog): nothing here can bring vLLM
        back, so stop and let the orchestrator restart the process; unfinished jobs stay uncommitted."""
        if not self.engine_failed:
            logger.error("engine died (%s): stopping the consumer", detail)
        self.engine_failed = True
        self.stop()

    def health_report(self) -> HealthReport:
        return self._watchdog.report(
            fetch=self._fetch, undelivered=len(self._redelivery), draining=self._stopping.is_set(),
            active_jobs=self.active_jobs, engine_in_flight=self._inflight.items, backlog_records=len(self._admission),
        )  # fmt: skip
