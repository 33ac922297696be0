"""One owner for the work of every polled record, from admission to commit.

A polled record is one ``Record`` (Confluent parallel-consumer's
``WorkContainer``) for its whole life: parsed once, waiting in the backlog,
running (its task: a job run, a dead letter or a job-state answer, with the
run's lease), waiting to run again after a failed delivery (its failures,
when it is due, the grades it carries), done. ``Work`` (parallel-consumer's
``WorkManager``) keeps them per partition and is also the rebalance
listener, so a revoke is one walk over the records it owns (quix-streams
merged its pausing manager into the consumer for the same reason: state
kept where the record is).

    poll -> add -> next (admission) -> start: its plan (Ledger.plan), then its one task
         (job run | dead letter | answer | nothing) -> finished -> done -> the checkpoint commits its offset

A record goes one way: what it gets is decided once, from everything known
of its job id (its job state, the cancels in force, a shadow's sample: all
the ledger's); its work is one task; how it ended is taken in one place,
when that task is over.

**Admission** costs memory only: the scheduler, not admission, decides what
the engine runs, so a small job behind big ones is admitted and served at
once. Past a cap (jobs, items or request bytes in flight), records already
fetched wait in arrival order and the assigned partitions are paused; they
resume when there is room. Nothing new starts while the output topics are
missing (grading now would only throw the grades away) or while a record's
output could not be delivered (its grades could not be written either; the
retries, which go first, probe the outputs).

**How a record's work ends** decides what follows: done (committable), the
engine died (``engine_failed``: the app stops, the process is restarted),
``DeliveryFailed`` (run again after its own back-off: a record that keeps
failing waits longer and longer while another's first failure waits the
first step; what was graded is sent again, not graded again), or a bug (the
DLT as ``internal_error``; the loop goes on).

**Rebalance.** Revoked: the partitions' running work is aborted, their other
records forgotten (the next owner reads them again from the committed
offset), and the checkpoint releases them (what the aborted runs sent is
acknowledged and counted in the job state, the offsets of what is done are
committed, the job state is dropped). Assigned: the partitions' job state is
read before any of their records starts. Every step is bounded by
``REVOKE_TIMEOUT_S``: a rebalance must finish whatever the broker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumer.pipeline.backoff import Backoff
from consumer.pipeline.checkpoint import Checkpoint
from consumer.pipeline.dead_letters import DeadLetters
from consumer.pipeline.fetch import Unreadable
from consumer.pipeline.intake import Job, Rejection, RejectReason, parse_request
from consumer.pipeline.jobs import EngineUnavailable, JobRun
from consumer.pipeline.jobstate import Action, Lease
from consumer.pipeline.offsets import OffsetTracker
from consumer.pipeline.shadow import Sampled
from consumer.pipeline.sinks import DeliveryFailed

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from consumer.engine.base import GradeOutcome, GradingEngine
    from consumer.metrics import Metrics
    from consumer.pipeline.decisions import DecisionLog
    from consumer.pipeline.jobstate import Ledger, Plan
    from consumer.pipeline.scheduler import Scheduler
    from consumer.pipeline.sinks import Sinks
    from consumer.settings import JobsSettings, KafkaSettings

logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Record:
    """A polled record and everything its work needs, from admission to commit."""

    tp: TopicPartition
    record: Any  # ConsumerRecord[bytes, bytes] or fetch.Unreadable
    parsed: Job | Rejection | None = None  # parsed once, on first look
    task: asyncio.Task[None] | None = None  # its work, while it runs
    run: JobRun | None = None  # a job being graded
    lease: Lease | None = None  # the run's right to write its job state
    rejection: Rejection | None = None  # a dead letter being sent
    failures: int = 0  # deliveries that failed in a row
    due_at: float | None = None  # clock time of its next run after a failed delivery
    carried: dict[int, GradeOutcome] = field(default_factory=dict)  # item index -> its unacknowledged outcome

    @property
    def offset(self) -> int:
        return int(self.record.offset)

    @property
    def where(self) -> str:
        return f"{self.tp.topic}:{self.tp.partition}:{self.record.offset}"


def _unreadable(record: Any) -> Rejection | None:
    """A record the client could not decode is a dead letter before any parsing."""
    if isinstance(record, Unreadable):
        return Rejection(RejectReason.UNDECODABLE_RECORD, f"the client could not decode the record: {record.error}")
    return None


async def _nothing() -> None:
    """The work of a record that has none (a re-send of a running job): done when it is over."""


class Work(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self, consumer: AIOKafkaConsumer, sinks: Sinks, engine: GradingEngine, metrics: Metrics,
        *, jobs: JobsSettings, kafka: KafkaSettings, scheduler: Scheduler, ledger: Ledger,
        decisions: DecisionLog | None, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        """``jobs``: the caps and the job runs' settings; ``kafka``: retries, commits and rebalance bounds;
        ``ledger``: what each request gets (its job state, the cancels in force, a shadow's sample)."""
        self._consumer, self._sinks, self._engine, self._metrics = consumer, sinks, engine, metrics
        self._jobs, self._kafka = jobs, kafka
        self._scheduler, self._ledger, self._decisions = scheduler, ledger, decisions
        self._clock = clock
        self._backoff = Backoff(kafka.delivery_retry_backoff_s, kafka.delivery_retry_backoff_max_s)
        self._dead_letters = DeadLetters(sinks, metrics)
        self._offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self.checkpoint = Checkpoint(
            consumer, sinks, ledger, self._offsets, metrics, interval_s=kafka.commit_interval_ms / 1000
        )
        self._records: dict[TopicPartition, dict[int, Record]] = {}  # polled, not done: by partition, by offset
        self._backlog: deque[Record] = deque()  # waiting to start, in order (retries first)
        self._running: dict[asyncio.Task[None], Record] = {}
        self._undelivered: set[Record] = set()  # whose last delivery failed: until delivered or revoked
        self._loaded: set[TopicPartition] = set()  # assigned partitions whose job state is read
        self.member = False  # in the group, with an assignment (maybe empty)
        self.stopping = False  # draining: a failed delivery is left to the next owner
        self.engine_failed: str | None = None  # the engine died under a job: why

    # --- figures -----------------------------------------------------------

    @property
    def jobs(self) -> int:
        return sum(1 for rec in self._running.values() if rec.run is not None)

    @property
    def items(self) -> int:
        """Items of the running jobs not yet back from the engine."""
        return sum(rec.run.remaining for rec in self._running.values() if rec.run is not None)

    @property
    def request_bytes(self) -> int:
        return sum(rec.run.request_bytes for rec in self._running.values() if rec.run is not None)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    @property
    def undelivered(self) -> int:
        """Records whose output could not be sent, waiting to be sent again."""
        return len(self._undelivered)

    # --- admission -----------------------------------------------------------

    def add(self, tp: TopicPartition, record: Any) -> None:
        """A polled record: tracked for its offset, and waiting."""
        self._offsets.track(tp, record.offset)
        rec = Record(tp, record, _unreadable(record))
        self._records.setdefault(tp, {})[record.offset] = rec
        self._backlog.append(rec)

    def retry_due(self) -> None:
        """Records whose wait after a failed delivery is over go first, oldest record first;
        each is handed out once per failure."""
        now = self._clock()
        due = [rec for rec in self._undelivered if rec.due_at is not None and rec.due_at <= now]
        for rec in due:
            rec.due_at = None
        due.sort(key=lambda rec: (rec.tp.topic, rec.tp.partition, rec.offset))
        self._backlog.extendleft(reversed(due))

    def next(self, *, outputs_ok: bool) -> Record | None:
        """The first record if it may start now (it leaves the backlog), else None.

        A partition whose job state is still being read holds its records
        (aiokafka fetches a new assignment while its callback loads the state).
        """
        if not self._backlog or (head := self._backlog[0]).tp not in self._loaded:
            return None
        record = head.record
        if head.parsed is None:
            head.parsed = parse_request(
                record.value,
                fallback_job_id=f"{record.topic}:{record.partition}:{record.offset}",
                max_items=self._jobs.max_items_per_job,
            )
        parsed = head.parsed
        items, size_bytes = (len(parsed.items), len(record.value or b"")) if isinstance(parsed, Job) else (0, 0)
        if not outputs_ok or not self._has_room(items, size_bytes, retry=head in self._undelivered):
            return None
        self._backlog.popleft()
        return head

    def _has_room(self, items: int, size_bytes: int, *, retry: bool) -> bool:
        caps = self._jobs
        if self.jobs >= caps.max_concurrent_jobs:
            return False
        if self._undelivered and not retry:
            return False
        inflight = self.items
        if inflight == 0:
            return True  # an idle consumer always takes the next job, even one above the caps
        return (
            inflight + items <= caps.max_inflight_items and self.request_bytes + size_bytes <= caps.max_inflight_bytes
        )

    def apply_pause(self, *, outputs_ok: bool) -> None:
        # pause() state is lost on reassignment, so it is re-applied every
        # turn of the loop (cheap: a set operation in aiokafka).
        if self._backlog or not outputs_ok:
            self._consumer.pause(*self._consumer.assignment())
        else:
            self._consumer.resume(*self._consumer.paused())
        self._metrics.partitions_paused.set(len(self._consumer.paused()))
        # Texts, not jobs: what autoscaling reads (deploy/k8s/keda.yaml).
        backlog = sum(len(rec.parsed.items) for rec in self._backlog if isinstance(rec.parsed, Job))
        self._metrics.items_waiting.set(self.items + backlog)

    def drop(self, partitions: Collection[TopicPartition] | None = None) -> None:
        """Revoked (or shut down: all). Not started means not done: the offsets stay
        uncommitted, and whoever owns the partition next takes the records."""
        gone = set(self._records) if partitions is None else set(partitions)
        self._backlog = deque(rec for rec in self._backlog if rec.tp not in gone)
        self._undelivered = {rec for rec in self._undelivered if rec.tp not in gone}
        for tp in gone:
            self._records.pop(tp, None)

    # --- starting work ---------------------------------------------------

    def start(self, rec: Record) -> None:
        """Start the record's work: grade it, answer it from its job state, or dead-letter it.

        Its plan (``Ledger.plan``) decides from everything known of its job id,
        then its one task runs; how it ended is taken when the task is over
        (``_finished``), in one place.
        """
        rec.run = rec.lease = None
        parsed = rec.parsed
        rec.rejection = parsed if isinstance(parsed, Rejection) else None
        work: Coroutine[Any, Any, None] | None = None  # None: skip (its original is running): nothing to do
        if isinstance(parsed, Job):
            plan = self._ledger.plan(parsed, rec.record.value or b"", rec.tp.partition, rec.offset)
            if plan.unsampled:  # a shadow: its items outside the sample (pipeline/shadow.py)
                self._metrics.shadow_items.labels(model=self._engine.model_name, sampled=Sampled.NO).inc(plan.unsampled)
            rec.rejection = plan.rejection
            if plan.action.grades:
                rec.run = self._job_run(rec, parsed, plan)
                rec.lease = self._ledger.started(parsed.job_id, rec.run)
                work = rec.run.run()
            else:
                logger.info("request %s: %s (no grading)", rec.where, plan.action.value)
            if plan.event is not None:  # republish, cancelled
                work = self._sinks.send_progress(plan.event)
        if rec.rejection is not None:
            work = self._dead_letters.deliver(rec.record, rec.rejection)
        rec.task = task = asyncio.create_task(work or _nothing())
        self._running[task] = rec
        self._metrics.jobs_active.set(self.jobs)
        task.add_done_callback(self._finished)

    def _job_run(self, rec: Record, job: Job, plan: Plan) -> JobRun:
        jobs, record = self._jobs, rec.record
        run = JobRun(
            job, engine=self._engine, sinks=self._sinks, metrics=self._metrics, scheduler=self._scheduler,
            batch_size=jobs.batch_size, flush_s=jobs.progress_flush_ms / 1000,
            request_bytes=len(record.value or b""), resume=plan.state.progress if plan.state is not None else None,
            carried=rec.carried if rec in self._undelivered else None, decisions=self._decisions,
            read_back_since_ms=record.timestamp if plan.action is Action.RESUME else None,
        )  # fmt: skip
        logger.info("job accepted: job_id=%s items=%d offset=%d", job.job_id, len(job.items), rec.offset)
        self._metrics.jobs_accepted.inc()
        return run

    # --- how work ends ----------------------------------------------------

    def _finished(self, task: asyncio.Task[None]) -> None:
        rec = self._running.pop(task)
        rec.task = None
        self._metrics.jobs_active.set(self.jobs)
        if rec.lease is not None:
            self._ledger.ended(rec.lease)  # its acknowledged items, or its terminal event, go to the job state
        if task.cancelled():
            return  # revoked or shut down: the record stays uncommitted
        if (error := task.exception()) is None:
            self._done(rec)
        elif isinstance(error, EngineUnavailable):
            # The offset is not committed: graded again after the restart.
            if self.engine_failed is None:
                self.engine_failed = str(error)
        elif isinstance(error, DeliveryFailed):
            self._failed_delivery(rec, error)
        else:
            self._internal_error(rec, error)

    def _done(self, rec: Record) -> None:
        self._offsets.mark_done(rec.tp, rec.offset)
        self._undelivered.discard(rec)  # its retry got through
        if (partition := self._records.get(rec.tp)) is not None:
            partition.pop(rec.offset, None)
        if rec.run is not None:
            self._metrics.jobs_completed.inc()

    def _failed_delivery(self, rec: Record, error: DeliveryFailed) -> None:
        """Run the record again after its back-off: duplicates, never loss; what was graded
        is sent again, not graded again (``carried``)."""
        # Only while the record is ours: the next owner reads it again from the committed offset.
        if rec.tp not in self._consumer.assignment() or self.stopping:
            logger.error("delivery failed (%s), record left to its next owner: %s", error, rec.where)
            return
        rec.failures += 1
        rec.carried = dict(rec.run.unacked) if rec.run is not None else {}
        delay_s = self._backoff.delay_s(rec.failures)
        rec.due_at = self._clock() + delay_s
        self._undelivered.add(rec)
        logger.error("delivery failed (%s), retry in %.1f s: %s", error, delay_s, rec.where)

    def _internal_error(self, rec: Record, error: BaseException) -> None:
        """A bug, not an outage: a retry would fail the same way for ever. The request goes to the
        DLT as ``internal_error`` (the type only: a message may quote a student's text)."""
        kind = type(error).__name__
        frames = "".join(traceback.format_tb(error.__traceback__))  # code locations, no values
        logger.error("internal error (%s) at %s\n%s", kind, rec.where, frames)
        self._metrics.internal_errors.inc()
        if rec.lease is not None:
            self._ledger.failed(rec.lease)
        self._undelivered.discard(rec)
        if rec.rejection is not None and rec.rejection.reason is RejectReason.INTERNAL_ERROR:
            self._done(rec)  # the dead letter of a bug hit a bug: give up
            return
        rec.parsed = Rejection(RejectReason.INTERNAL_ERROR, kind)  # what the record is now: its retries too
        self.start(rec)

    # --- rebalance and drain ------------------------------------------------

    async def on_partitions_revoked(self, revoked: Any) -> None:
        revoked = set(revoked)
        self.member = False
        lost = [rec.task for tp in revoked for rec in self._records.get(tp, {}).values() if rec.task is not None]
        if lost:
            logger.info("revoked %d partitions: aborting %d jobs", len(revoked), len(lost))
        await self._cancel(lost)
        self.drop(revoked)
        await self.checkpoint.release(revoked, self._kafka.revoke_timeout_s)
        self._loaded -= revoked

    async def on_partitions_assigned(self, assigned: Any) -> None:
        assigned = set(assigned)
        try:
            async with asyncio.timeout(self._kafka.revoke_timeout_s * 3):
                await self._ledger.load(tp.partition for tp in assigned)
        except (KafkaError, TimeoutError, LookupError) as exc:
            # Jobs are then graded from their first item: at-least-once, as before job state.
            logger.error("job state could not be loaded (%s): resumes will regrade", type(exc).__name__)
        self._loaded |= assigned
        self.member = True
        logger.info("assigned %d partitions", len(assigned))

    async def drain(self) -> None:
        """Stop: nothing new starts, running work gets the grace period, then the checkpoint."""
        self.stopping = True
        self.drop()  # not started, not done: whoever owns the partition next takes them
        with contextlib.suppress(KafkaError, AssertionError):
            self._consumer.pause(*self._consumer.assignment())
        if self._running:
            _, late = await asyncio.wait(list(self._running), timeout=self._kafka.shutdown_grace_s)
            if late:
                logger.warning("grace period over: aborting %d jobs", len(late))
                await self._cancel(late)
        await self.checkpoint.commit()

    async def _cancel(self, tasks: Collection[asyncio.Task[None]]) -> None:
        """Abort these tasks and give them ``REVOKE_TIMEOUT_S`` to finish their clean-up."""
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self._kafka.revoke_timeout_s)
