"""The app's one door to job state: what to do with a request, and what to remember.

``plan`` answers, for a valid request, from the job state (``jobstate``) and
the cancel commands (``control``): grade it (all, or what an earlier owner
did not get acknowledged), publish its terminal event again, publish
``cancelled``, do nothing, or dead-letter it as a ``job_id_conflict``.
``checkpoint`` copies the running jobs' acknowledged items into the state and
writes it; the committer calls it before every offset commit, so an offset is
never committed ahead of the state that explains it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import TypeAdapter

from consumer.contract import CancelledData, CancelledEvent, CompleteEvent, ProgressEvent
from consumer.pipeline.intake import Job, Rejection, RejectReason
from consumer.pipeline.jobstate import Admission, JobPhase, JobState, JobStateStore, decide, fingerprint

if TYPE_CHECKING:
    from consumer.metrics import Metrics
    from consumer.pipeline.control import ControlReader
    from consumer.pipeline.jobs import JobRun

logger = logging.getLogger(__name__)

_EVENT = TypeAdapter[ProgressEvent](ProgressEvent)


class Step(StrEnum):
    GRADE = "grade"  # state is new or resumed
    PUBLISH = "publish"  # only ``event`` (a finished job's terminal event, or ``cancelled``)
    SKIP = "skip"  # an identical request of a job running now: nothing to do
    REJECT = "reject"  # ``rejection``: the dead-letter topic


@dataclass(frozen=True, slots=True)
class Plan:
    step: Step
    state: JobState | None = None
    event: CompleteEvent | CancelledEvent | None = None
    rejection: Rejection | None = None


class Ledger:
    def __init__(self, store: JobStateStore, control: ControlReader | None, metrics: Metrics) -> None:
        self._store = store
        self._control = control
        self._metrics = metrics
        self._runs: dict[str, JobRun] = {}  # job_id -> the run grading it here
        # Runs aborted (revoke, failed delivery) whose sends may still be
        # acknowledged: checkpointed again until their job restarts or leaves.
        self._aborted: dict[str, JobRun] = {}

    def plan(self, job: Job, value: bytes, partition: int, offset: int) -> Plan:
        print_ = fingerprint(value)
        state = self._store.get(job.job_id)
        admission = decide(state, print_, partition, offset, original_pending=True)
        if admission is Admission.CONFLICT:
            assert state is not None
            self._count(admission)
            detail = (
                f"job_id {job.job_id} is {state.phase.value} with a different request "
                f"(partition {state.partition}, offset {state.offset}); send a new job_id"
            )
            return Plan(Step.REJECT, rejection=Rejection(RejectReason.JOB_ID_CONFLICT, detail))
        if admission is Admission.REPUBLISH:
            assert state is not None and state.terminal is not None
            self._count(admission)
            event = _EVENT.validate_python(state.terminal)
            assert isinstance(event, CompleteEvent | CancelledEvent)
            return Plan(Step.PUBLISH, state=state, event=event)
        if admission is Admission.DUPLICATE:
            self._count(admission)
            return Plan(Step.SKIP, state=state)
        if admission is Admission.NEW:
            state = JobState(job.job_id, print_, partition, offset, total_items=len(job.items))
        assert state is not None
        if self._control is not None and self._control.is_cancelled(job.job_id):
            # Cancelled before (or while) its request was read: never graded.
            event = CancelledEvent(
                job_id=job.job_id,
                data=CancelledData(
                    total_items=len(job.items), completed=len(state.done), succeeded=state.succeeded,
                    failed=state.failed, total_time_seconds=round(state.elapsed_s, 3),
                ),
            )  # fmt: skip
            self.finished(state, event)
            self._metrics.jobs_cancelled.inc()
            return Plan(Step.PUBLISH, state=state, event=event)
        if admission is Admission.RESUME:
            self._metrics.items_resumed.inc(len(state.done))
            logger.info("job resumed: job_id=%s acknowledged before=%d", job.job_id, len(state.done))
        state.offset = offset
        self._store.put(state)
        return Plan(Step.GRADE, state=state)

    def _count(self, admission: Admission) -> None:
        self._metrics.jobs_deduplicated.labels(admission=admission.value).inc()

    def started(self, run: JobRun) -> None:
        self._runs[run.job.job_id] = run
        self._aborted.pop(run.job.job_id, None)
        # A cancel that arrived between plan() and now.
        if self._control is not None and self._control.is_cancelled(run.job.job_id):
            run.request_cancel()

    def cancel(self, job_id: str) -> bool:
        """A cancel command: stop the job if it runs here. Returns whether it did."""
        run = self._runs.get(job_id)
        if run is None or run.terminal is not None:
            return False
        run.request_cancel()
        self._metrics.jobs_cancelled.inc()
        return True

    def ended(self, run: JobRun) -> None:
        """The run's task is over, however it ended (its last checkpoint is taken first)."""
        self._snapshot(run)
        if self._runs.get(run.job.job_id) is run:
            del self._runs[run.job.job_id]
            if run.terminal is None and self._owned(run) is not None:
                self._aborted[run.job.job_id] = run
        if run.terminal is not None and (state := self._owned(run)) is not None:
            self.finished(state, run.terminal)

    def _owned(self, run: JobRun) -> JobState | None:
        """The state the run was planned with, if the store still holds that one: a reload
        after a rebalance, or a later request under the same job_id, makes a new state
        that an old run must not overwrite."""
        state = self._store.get(run.job.job_id)
        return state if state is not None and state is run.resumed_from else None

    def finished(self, state: JobState, event: CompleteEvent | CancelledEvent) -> None:
        state.phase = JobPhase.CANCELLED if isinstance(event, CancelledEvent) else JobPhase.COMPLETED
        state.terminal = event.model_dump(mode="json")
        state.done = set()  # the items are no longer needed: the terminal event says it all
        self._store.put(state)

    def _snapshot(self, run: JobRun) -> None:
        state = self._owned(run)
        if state is None or state.finished or state.done == run.acked:
            return
        state.done = set(run.acked)
        state.succeeded, state.failed, state.elapsed_s = run.acked_ok, run.acked_failed, run.elapsed_s
        self._store.put(state)

    async def checkpoint(self) -> None:
        """Before an offset commit: every running job's acknowledged items, written and acknowledged."""
        for run in [*self._runs.values(), *self._aborted.values()]:
            self._snapshot(run)
        await self._store.flush()

    async def load(self, partitions: Iterable[int]) -> None:
        kept = await self._store.load(partitions)
        logger.info("job state loaded: %d jobs", kept)

    def forget(self, partitions: Iterable[int]) -> None:
        self._store.forget(partitions)
        self._aborted = {job_id: run for job_id, run in self._aborted.items() if self._owned(run) is not None}
