"""What a valid request gets, given what the job state remembers of its job id: a pure decision.

The caller (``Ledger.plan``) writes the state the plan returns and counts it;
nothing here touches the store, the metrics or the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from pydantic import TypeAdapter

from consumer.contract import CancelledData, CancelledEvent, CompleteEvent, ProgressEvent
from consumer.pipeline.intake import Job, Rejection, RejectReason
from consumer.pipeline.jobstate.record import JobState
from consumer.pipeline.shadow import sampled

_EVENT = TypeAdapter[ProgressEvent](ProgressEvent)


class Action(StrEnum):
    GRADE = "grade"  # a job id never seen: grade it all
    RESUME = "resume"  # its own record read again: grade the items not yet acknowledged
    REPUBLISH = "republish"  # identical to a finished job: publish its terminal event again, grade nothing
    SKIP = "skip"  # identical to a job running now from another record: nothing to do
    CANCELLED = "cancelled"  # a cancel command came first: publish ``cancelled``, grade nothing
    CONFLICT = "conflict"  # another request under a running or finished job id: dead letter

    @property
    def grades(self) -> bool:
        return self in (Action.GRADE, Action.RESUME)


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    state: JobState | None = None  # the state to write before acting (GRADE, RESUME, CANCELLED)
    event: CompleteEvent | CancelledEvent | None = None  # what to publish (REPUBLISH, CANCELLED)
    rejection: Rejection | None = None  # the dead letter's reason (CONFLICT)
    unsampled: int = 0  # a shadow's items outside its sample, marked done in ``state`` (GRADE, RESUME)


def plan(
    state: JobState | None, job: Job, print_: str, partition: int, offset: int, *, cancelled: bool,
    sample_rate: float = 1.0,
) -> Plan:  # fmt: skip
    """``print_``: the request's fingerprint; ``cancelled``: a cancel command for the job id is in force;
    ``sample_rate``: a shadow's share of the items (the others are done before it starts)."""
    if state is None:
        fresh = JobState(job_id=job.job_id, fingerprint=print_, partition=partition, offset=offset,
                         total_items=len(job.items))  # fmt: skip
        if cancelled:
            return _cancelled(fresh, job)
        return _graded(Plan(Action.GRADE, state=fresh), job, sample_rate)
    if state.fingerprint != print_:
        detail = (
            f"job_id {job.job_id} is {state.phase.value} with a different request "
            f"(partition {state.partition}, offset {state.offset}); send a new job_id"
        )
        return Plan(Action.CONFLICT, rejection=Rejection(RejectReason.JOB_ID_CONFLICT, detail))
    if state.finished:
        event = _EVENT.validate_python(state.terminal)
        if not isinstance(event, CompleteEvent | CancelledEvent):
            raise ValueError(f"job {job.job_id}: a finished state's terminal event is a {event.event}")
        return Plan(Action.REPUBLISH, event=event)
    if (state.partition, state.offset) != (partition, offset):
        # A re-send while the original runs (its record is uncommitted, so it is read again).
        return Plan(Action.SKIP)
    if cancelled:
        return _cancelled(state, job)
    return _graded(Plan(Action.RESUME, state=state.model_copy(deep=True)), job, sample_rate)


def _graded(decided: Plan, job: Job, sample_rate: float) -> Plan:
    """A shadow grades only its sample (pipeline/shadow.py): the other items are done from the start."""
    if sample_rate >= 1.0 or decided.state is None:
        return decided
    outside = frozenset(i for i, item in enumerate(job.items) if not sampled(job.job_id, item.id_alumno, sample_rate))
    decided.state.done |= outside
    return replace(decided, unsampled=len(outside))


def _cancelled(state: JobState, job: Job) -> Plan:
    """Cancelled before (or while) its request was read: never graded (further)."""
    event = CancelledEvent(
        job_id=job.job_id,
        data=CancelledData(
            total_items=len(job.items), completed=len(state.done), succeeded=state.succeeded, failed=state.failed,
            total_time_seconds=round(state.elapsed_s, 3),
        ),
    )  # fmt: skip
    return Plan(Action.CANCELLED, state=state.finish(event), event=event)
