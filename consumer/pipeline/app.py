"""The consumer loop: poll, start work, pause when full, commit what is done.

    poll -> intake (job or dead letter) -> JobRun (engine, sinks) -> mark done -> commit

The loop never waits on the engine: it keeps polling (so the group
membership stays alive through long GPU jobs) and starts every job it has
room for at once, so the engine batches across jobs. When work in flight
reaches its cap, records already fetched wait in a backlog and the
assigned partitions are paused; they resume when there is room.

Offsets are committed explicitly, on a timer, one past the contiguous
prefix of records whose work is done and acknowledged (``OffsetTracker``):
a crash re-delivers unfinished jobs (at-least-once; ``result_id`` dedups).

The loop keeps only the loop; its helpers each own one concern: ``SafeFetch``
(no record can stop the loop), ``DeadLetters`` (no dead letter can hold a
partition), ``Watchdog`` (broker, output topics and engine on a timer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumer.engine.base import GradingEngine
from consumer.health import HealthReport
from consumer.metrics import Metrics
from consumer.pipeline.backoff import Backoff
from consumer.pipeline.dead_letters import DeadLetters
from consumer.pipeline.fetch import SafeFetch, Unreadable
from consumer.pipeline.intake import Job, Rejection, RejectReason, parse_request
from consumer.pipeline.jobs import EngineUnavailable, JobRun
from consumer.pipeline.jobstate import Action, Lease, Ledger, Plan
from consumer.pipeline.offsets import Committer, OffsetTracker
from consumer.pipeline.redelivery import Redeliveries
from consumer.pipeline.scheduler import Scheduler
from consumer.pipeline.sinks import DeliveryFailed, Sinks
from consumer.pipeline.watchdog import Watchdog

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from consumer.contract import CancelledEvent, CompleteEvent
    from consumer.pipeline.control import ControlReader

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AppConfig:
    """Caps on work in flight and the loop's timings (built from Settings by the service)."""

    max_items_per_job: int = 2000
    max_inflight_items: int = 20_000
    max_inflight_bytes: int = 256 * 1024 * 1024
    max_concurrent_jobs: int = 64
    batch_size: int = 10
    progress_flush_s: float = 0.25
    commit_interval_s: float = 0.5
    shutdown_grace_s: float = 30.0
    revoke_timeout_s: float = 10.0  # bounded work inside a rebalance
    kafka_check_interval_s: float = 2.0  # how often the broker is asked for metadata (health)
    retry_backoff_s: float = 1.0  # before re-running a job whose output could not be sent (doubles, capped)
    retry_backoff_max_s: float = 60.0
    output_topics: tuple[str, ...] = ()  # results, progress, DLT: checked to exist before grading


@dataclass(slots=True)
class _Pending:
    tp: TopicPartition
    record: Any  # ConsumerRecord[bytes, bytes]
    parsed: Job | Rejection | None = None  # parsed once, on first look


@dataclass(slots=True)
class _Work:
    tp: TopicPartition
    record: Any  # ConsumerRecord[bytes, bytes]
    run: JobRun | None  # None for a dead letter
    lease: Lease | None = None  # the run's right to write its job state
    rejection: Rejection | None = None  # what a dead letter says


class ConsumerApp:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        sinks: Sinks,
        engine: GradingEngine,
        metrics: Metrics,
        *,
        requests_topic: str,
        config: AppConfig,
        scheduler: Scheduler | None = None,
        ledger: Ledger | None = None,
        control: ControlReader | None = None,
    ) -> None:
        self._consumer = consumer
        self._sinks = sinks
        self._engine = engine
        self._metrics = metrics
        metrics.expect_dead_letter_reasons([*RejectReason, "too_large_to_fetch"])
        self._topic = requests_topic
        self._limits = config
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        # Job state (item-level progress, idempotent job ids, cancel): written before every offset commit.
        self._ledger = ledger
        self._control = control
        # Partitions whose job state is loaded. aiokafka starts fetching a new
        # assignment while the assignment callback (which loads the state)
        # still runs: a record of a partition not yet loaded waits.
        self._state_ready: set[TopicPartition] = set()
        self._committer = Committer(
            consumer, self._tracker, metrics, interval_s=config.commit_interval_s,
            before_commit=ledger.save if ledger is not None else None,
        )  # fmt: skip
        # Between the job runs and the engine: decides what the engine runs next.
        self.scheduler = scheduler or Scheduler(engine, metrics)
        self._fetch = SafeFetch(consumer, metrics)
        self._dead_letters = DeadLetters(sinks, metrics)
        self._watchdog = Watchdog(
            consumer, engine, metrics,
            output_topics=config.output_topics, interval_s=config.kafka_check_interval_s,
            on_engine_died=self._engine_died, is_member=lambda: self._member,
        )  # fmt: skip
        self._backlog: deque[_Pending] = deque()
        self._work: dict[asyncio.Task[None], _Work] = {}
        self._member = False  # in the group, with an assignment (maybe empty)
        self.engine_failed = False  # the engine died: stop, and let the process be restarted
        # Records whose output could not be delivered, each with its back-off
        # and carried grades. No new job is admitted meanwhile.
        self._redelivery = Redeliveries(Backoff(config.retry_backoff_s, config.retry_backoff_max_s))
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()

    # --- lifecycle -------------------------------------------------------

    async def run(self) -> None:
        """Consume until ``stop()``; then drain within the grace period."""
        self._consumer.subscribe([self._topic], listener=_Listener(self))
        # Know whether the output topics exist before grading anything.
        await self._watchdog.check()
        control = asyncio.create_task(self._control.run(self.cancel_job)) if self._control is not None else None
        if self._control is not None:
            # Cancels of the last CANCEL_TTL_S first: a cancelled job's request must not start.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._control.ready.wait(), self._limits.revoke_timeout_s)
        committer = asyncio.create_task(self._committer.run())
        watchdog = asyncio.create_task(self._watchdog.run())
        try:
            while not self._stopping.is_set():
                # Retries go first: they probe the outputs that hold everything else back.
                self._backlog.extendleft(
                    _Pending(r.tp, r.record, _unreadable(r.record)) for r in reversed(self._redelivery.due())
                )
                self._start_from_backlog()
                self._apply_pause()
                batches = await self._fetch.getmany(timeout_ms=100, max_records=100)
                for tp, records in batches.items():
                    for record in records:
                        self._tracker.track(tp, record.offset)
                        self._backlog.append(_Pending(tp, record, _unreadable(record)))
        finally:
            committer.cancel()
            watchdog.cancel()
            if control is not None:
                control.cancel()
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
        # Records not started are not done, so their offsets are not
        # committed: whoever owns the partition next will take them.
        self._backlog.clear()
        with contextlib.suppress(KafkaError, AssertionError):
            self._consumer.pause(*self._consumer.assignment())
        if self._work:
            _, late = await asyncio.wait(list(self._work), timeout=self._limits.shutdown_grace_s)
            if late:
                logger.warning("grace period over: aborting %d jobs", len(late))
                await self._cancel(late)
        await self._sinks.flush()
        await self._committer.commit()

    # --- starting work ---------------------------------------------------

    @property
    def active_jobs(self) -> int:
        return sum(1 for work in self._work.values() if work.run is not None)

    def _inflight_items(self) -> int:
        return sum(work.run.remaining for work in self._work.values() if work.run is not None)

    def _inflight_bytes(self) -> int:
        return sum(work.run.request_bytes for work in self._work.values() if work.run is not None)

    def _has_room(self, items: int, size_bytes: int, *, retry: bool = False) -> bool:
        # Admitting costs memory only: the scheduler, not admission, decides
        # what the engine runs, so a small job behind big ones is admitted
        # and served at once. Past a cap, jobs wait in arrival order.
        # Output topics gone: grading now would only throw the grades away.
        if not self._watchdog.outputs_ok or self.active_jobs >= self._limits.max_concurrent_jobs:
            return False
        if len(self._redelivery) and not retry:
            return False
        inflight = self._inflight_items()
        if inflight == 0:
            return True  # an idle consumer always takes the next job, even one above the caps
        return (
            inflight + items <= self._limits.max_inflight_items
            and self._inflight_bytes() + size_bytes <= self._limits.max_inflight_bytes
        )

    def _start_from_backlog(self) -> None:
        while self._backlog and not self._stopping.is_set():
            head = self._backlog[0]
            if self._ledger is not None and head.tp not in self._state_ready:
                return
            if head.parsed is None:
                record = head.record
                head.parsed = parse_request(
                    record.value,
                    fallback_job_id=f"{record.topic}:{record.partition}:{record.offset}",
                    max_items=self._limits.max_items_per_job,
                )
            job = head.parsed if isinstance(head.parsed, Job) else None
            size_bytes = len(head.record.value or b"") if job is not None else 0
            retry = (head.tp, head.record.offset) in self._redelivery
            if not self._has_room(len(job.items) if job is not None else 0, size_bytes, retry=retry):
                return
            self._backlog.popleft()
            self._start(head.tp, head.record, head.parsed)

    def _start(self, tp: TopicPartition, record: Any, parsed: Job | Rejection) -> None:
        if isinstance(parsed, Rejection):
            logger.warning("dead letter: %s:%d:%d reason=%s", tp.topic, tp.partition, record.offset, parsed.reason)
            self._metrics.dead_letters.labels(reason=parsed.reason.value).inc()
            task = asyncio.create_task(self._dead_letters.deliver(record, parsed))
            self._work[task] = _Work(tp, record, None, rejection=parsed)
        else:
            plan = (
                self._ledger.plan(
                    parsed,
                    record.value,
                    tp.partition,
                    record.offset,
                    cancelled=self._control is not None and self._control.is_cancelled(parsed.job_id),
                )
                if self._ledger
                else None
            )
            if plan is not None and not plan.action.grades:
                self._start_planned(tp, record, plan)
                return
            run = JobRun(
                parsed,
                engine=self._engine,
                sinks=self._sinks,
                metrics=self._metrics,
                scheduler=self.scheduler,
                batch_size=self._limits.batch_size,
                flush_s=self._limits.progress_flush_s,
                request_bytes=len(record.value or b""),
                resume=plan.state.progress if plan is not None and plan.state is not None else None,
                carried=self._redelivery.carried(tp, record.offset),
            )
            logger.info("job accepted: job_id=%s items=%d offset=%d", parsed.job_id, len(parsed.items), record.offset)
            self._metrics.jobs_accepted.inc()
            task = asyncio.create_task(run.run())
            lease = self._ledger.started(parsed.job_id, run) if self._ledger is not None else None
            self._work[task] = _Work(tp, record, run, lease=lease)
        self._metrics.jobs_active.set(self.active_jobs)
        task.add_done_callback(self._finished)

    def _start_planned(self, tp: TopicPartition, record: Any, plan: Plan) -> None:
        """A request the job state answers without grading (see ledger.py)."""
        if plan.action is Action.CONFLICT:
            assert plan.rejection is not None
            self._start(tp, record, plan.rejection)
            return
        logger.info("request %s:%d:%d: %s (no grading)", tp.topic, tp.partition, record.offset, plan.action.value)
        event = plan.event
        task = asyncio.create_task(self._publish(event) if event is not None else asyncio.sleep(0))
        self._work[task] = _Work(tp, record, None)
        task.add_done_callback(self._finished)

    async def _publish(self, event: CompleteEvent | CancelledEvent) -> None:
        await (await self._sinks.progress(event))

    def cancel_job(self, job_id: str) -> None:
        """A cancel command (control topic): stop the job if it runs here."""
        if self._ledger is not None:
            self._ledger.cancel(job_id)

    def _finished(self, task: asyncio.Task[None]) -> None:
        work = self._work.pop(task)
        self._metrics.jobs_active.set(self.active_jobs)
        if work.lease is not None and self._ledger is not None:
            self._ledger.ended(work.lease)  # its acknowledged items, or its terminal event, go to the job state
        if task.cancelled():
            return  # revoked or shut down: the record stays uncommitted
        error = task.exception()
        if error is None:
            self._done(work)
        elif isinstance(error, EngineUnavailable):
            # The job's offset is not committed, so it is graded again after the restart.
            self._engine_died(str(error))
        elif isinstance(error, DeliveryFailed):
            self._undelivered(work, error)
        else:
            self._internal_error(work, error)

    def _done(self, work: _Work) -> None:
        self._tracker.mark_done(work.tp, work.record.offset)
        self._redelivery.delivered(work.tp, work.record.offset)  # its retry got through
        if work.run is not None:
            self._metrics.jobs_completed.inc()

    def _undelivered(self, work: _Work, error: DeliveryFailed) -> None:
        """Output could not be delivered (e.g. broker unreachable past the producer's
        retries): run the record again after its back-off. Duplicates, never loss;
        what was graded is sent again, not graded again (``carried``)."""
        where = f"{work.tp.topic}:{work.tp.partition}:{work.record.offset}"
        # Only while the record is ours: the next owner reads it again from the committed offset.
        if work.tp not in self._consumer.assignment() or self._stopping.is_set():
            logger.error("delivery failed (%s), record left to its next owner: %s", error, where)
            return
        carried = work.run.unacked if work.run is not None else {}
        delay_s = self._redelivery.failed(work.tp, work.record, carried)
        logger.error("delivery failed (%s), retry in %.1f s: %s", error, delay_s, where)

    def _internal_error(self, work: _Work, error: BaseException) -> None:
        """A bug, not an outage: retrying would fail the same way for ever. The request
        goes to the DLT as ``internal_error`` (the exception's type only: its message
        may quote a student's text) and the consumer goes on with the next."""
        kind = type(error).__name__
        frames = "".join(traceback.format_tb(error.__traceback__))  # code locations, no values
        logger.error("internal error (%s) at %s:%d:%d\n%s", kind, work.tp.topic, work.tp.partition,
                     work.record.offset, frames)  # fmt: skip
        self._metrics.internal_errors.inc()
        if work.lease is not None and self._ledger is not None:
            self._ledger.failed(work.lease)
        self._redelivery.delivered(work.tp, work.record.offset)
        if work.rejection is not None and work.rejection.reason is RejectReason.INTERNAL_ERROR:
            # The dead letter of a bug failed by a bug too: nothing left to try.
            self._tracker.mark_done(work.tp, work.record.offset)
            return
        self._start(work.tp, work.record, Rejection(RejectReason.INTERNAL_ERROR, kind))

    def _engine_died(self, detail: str) -> None:
        """The one path for a dead engine, seen by a job or by the watchdog.

        Nothing here can bring vLLM back: stop taking work and let the
        orchestrator restart the process (no error results are published
        for the engine's death; unfinished jobs stay uncommitted).
        """
        if not self.engine_failed:
            logger.error("engine died (%s): stopping the consumer", detail)
        self.engine_failed = True
        self.stop()

    def _apply_pause(self) -> None:
        # pause() state is lost on reassignment, so it is re-applied every
        # turn of the loop (cheap: a set operation in aiokafka).
        assigned = self._consumer.assignment()
        if self._backlog or not self._watchdog.outputs_ok:
            self._consumer.pause(*assigned)
        else:
            self._consumer.resume(*self._consumer.paused())
        self._metrics.partitions_paused.set(len(self._consumer.paused()))
        # Texts, not jobs: what autoscaling reads (deploy/k8s/keda.yaml).
        backlog = sum(len(p.parsed.items) for p in self._backlog if isinstance(p.parsed, Job))
        self._metrics.items_waiting.set(self._inflight_items() + backlog)

    async def _cancel(self, tasks: Iterable[asyncio.Task[None]]) -> None:
        tasks = list(tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self._limits.revoke_timeout_s)

    # --- health and rebalances -------------------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._member = False
        lost = [task for task, work in self._work.items() if work.tp in revoked]
        if lost:
            logger.info("revoked %d partitions: aborting %d jobs", len(revoked), len(lost))
        await self._cancel(lost)
        self._backlog = deque(entry for entry in self._backlog if entry.tp not in revoked)
        self._redelivery.forget(revoked)
        # What the aborted jobs already sent gets its acknowledgements first,
        # so the job state counts it: the next owner regrades only what was
        # still in the engine, not what was published a moment ago.
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(self._limits.revoke_timeout_s):
                await self._sinks.flush()
        # The commit writes the aborted jobs' acknowledged items to the job
        # state first: the next owner grades only the rest.
        await self._committer.release(revoked, self._limits.revoke_timeout_s)
        if self._ledger is not None:
            self._ledger.forget(tp.partition for tp in revoked)
        self._state_ready -= revoked

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._ledger is not None:
            try:
                async with asyncio.timeout(self._limits.revoke_timeout_s * 3):
                    await self._ledger.load(tp.partition for tp in assigned)
            except (KafkaError, TimeoutError) as exc:
                # Jobs are then graded from their first item: at-least-once, as before job state.
                logger.error("job state could not be loaded (%s): resumes will regrade", type(exc).__name__)
        self._state_ready |= assigned
        self._member = True
        logger.info("assigned %d partitions", len(assigned))

    # --- health ------------------------------------------------------------

    def health_report(self) -> HealthReport:
        engine = self._engine.health()
        reasons = []
        if not engine.loaded:
            reasons.append(f"engine not ready: {engine.detail}")
        if not self._member:
            reasons.append("not in the consumer group")
        if (down_s := self._watchdog.kafka_down_s) is not None:
            reasons.append(f"Kafka unreachable for {down_s:.0f} s")
        if self._watchdog.missing_topics:
            reasons.append(f"output topics missing: {', '.join(self._watchdog.missing_topics)}")
        if self._fetch.failing is not None:
            reasons.append(f"fetching requests fails for {self._fetch.failing_for_s:.0f} s: {self._fetch.failing}")
        if waiting := len(self._redelivery):
            reasons.append(f"output delivery failing ({waiting} records to send again)")
        if self._stopping.is_set():
            reasons.append("draining")
        body: dict[str, object] = {
            "model_loaded": engine.loaded,
            "model": self._engine.model_name,
            "gpu_available": engine.device == "cuda",
            "active_jobs": self.active_jobs,
            "engine_in_flight": self._inflight_items(),
            "kafka": {
                "group_member": self._member,
                "reachable": self._watchdog.kafka_down_since is None,
                "output_topics_ok": self._watchdog.outputs_ok,
                "assigned_partitions": len(self._consumer.assignment()),
                "paused_partitions": len(self._consumer.paused()),
                "backlog_records": len(self._backlog),
            },
            **engine.gpu_memory,
        }
        return HealthReport(ready=not reasons, reasons=reasons, body=body)


def _unreadable(record: Any) -> Rejection | None:
    """A record the client could not decode is a dead letter before any parsing."""
    if isinstance(record, Unreadable):
        return Rejection(RejectReason.UNDECODABLE_RECORD, f"the client could not decode the record: {record.error}")
    return None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, app: ConsumerApp) -> None:
        self._app = app

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._app.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._app.on_assigned(set(assigned))
