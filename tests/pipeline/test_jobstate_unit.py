"""Job state as a unit: the record and its wire form, the pure plan, the ledger's
leases and timers (a real store whose producer only records; fake clocks)."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.contract import CancelledEvent, CompleteData, CompleteEvent, Item, JobStatus
from consumer.metrics import Metrics
from consumer.pipeline.intake import Job, RejectReason
from consumer.pipeline.jobstate import (
    Action,
    JobState,
    JobStateStore,
    Ledger,
    Progress,
    UnknownSchemaVersion,
    fingerprint,
    plan,
)
from consumer.pipeline.shadow import sampled
from consumer.testing.topics import items
from tests.pipeline import doubles
from tests.pipeline.doubles import Clock, Producer, Run

# A record as the hand-written encoder before the pydantic record wrote it: still read, written alike.
V1_RECORD = (
    b'{"schema_version":1,"job_id":"j","fingerprint":"ab","partition":0,"offset":3,"total_items":5,'
    b'"phase":"running","done":"Ew==","succeeded":2,"failed":1,"elapsed_s":1.5,"updated_at":1.5,"terminal":null}'
)
JOB = Job("school/1", tuple(Item.model_validate(i) for i in items(20)))
UNTIL_S = 2_000_000.0  # unix time: a cancel in force all through a test (the ledger runs on a fake clock)
REQUEST = b"the request's bytes"


def _state(**overrides: Any) -> JobState:
    values: dict[str, Any] = {
        "job_id": JOB.job_id, "fingerprint": fingerprint(REQUEST), "partition": 2, "offset": 7, "total_items": 20,
    }  # fmt: skip
    return JobState(**(values | overrides))


def _complete(job_id: str = JOB.job_id) -> CompleteEvent:
    data = CompleteData(total_processed=20, succeeded=20, failed=0, total_time_seconds=1.0)
    return CompleteEvent(job_id=job_id, data=data)


def test_a_state_survives_encoding_with_its_bitmap_and_reads_the_earlier_encoders_records() -> None:
    state = _state(total_items=2000, done={0, 1, 7, 1999}, succeeded=3, failed=1, elapsed_s=12.5)
    assert JobState.decode(state.encode()) == state
    assert len(state.encode()) < 1024  # 2000 items fit a small record (the bitmap is 336 characters)
    old = JobState.decode(V1_RECORD)
    assert old.done == {0, 1, 4} and old.phase is JobStatus.PROCESSING
    assert old.encode() == V1_RECORD  # byte for byte: running consumers of either version read each other


@pytest.mark.parametrize("version", [2, 0, None, "1", True])
def test_a_record_of_an_unknown_schema_version_is_a_typed_error(version: object) -> None:
    raw = V1_RECORD.replace(b'"schema_version":1', b'"schema_version":' + str(version).lower().encode())
    if version is None:
        raw = V1_RECORD.replace(b'"schema_version":1,', b"")
    if version == "1":
        raw = V1_RECORD.replace(b'"schema_version":1', b'"schema_version":"1"')
    with pytest.raises(UnknownSchemaVersion):
        JobState.decode(raw)
    with pytest.raises(ValueError):  # not a record at all: another error, also a ValueError
        JobState.decode(b'{"schema_version":1,"job_id":"j"}')


def _print(state: JobState | None = None) -> str:
    return state.fingerprint if state is not None else fingerprint(REQUEST)


@pytest.mark.parametrize(
    ("state", "print_", "where", "expected"),
    [
        (None, fingerprint(REQUEST), (0, 1), Action.GRADE),
        (_state(), "another", (2, 7), Action.CONFLICT),
        (_state(phase=JobStatus.COMPLETED, terminal=_complete().model_dump(mode="json")), "another", (2, 9),
         Action.CONFLICT),
        (_state(phase=JobStatus.COMPLETED, terminal=_complete().model_dump(mode="json")), fingerprint(REQUEST),
         (2, 9), Action.REPUBLISH),
        (_state(), fingerprint(REQUEST), (2, 7), Action.RESUME),  # the same record, read again
        (_state(), fingerprint(REQUEST), (2, 9), Action.SKIP),  # a re-send while it runs
    ],
)  # fmt: skip
def test_what_a_request_gets(state: JobState | None, print_: str, where: tuple[int, int], expected: Action) -> None:
    before = state.model_copy(deep=True) if state is not None else None
    decided = plan(state, JOB, print_, *where, cancelled=False)
    assert decided.action is expected
    assert state == before  # pure: the state it was given is untouched
    assert (decided.state is not None) == expected.grades
    if expected is Action.CONFLICT:
        assert decided.rejection is not None and decided.rejection.reason is RejectReason.JOB_ID_CONFLICT
    if expected is Action.REPUBLISH:
        assert decided.event == _complete()


def test_a_cancelled_job_id_is_never_graded_and_its_state_is_finished() -> None:
    fresh = plan(None, JOB, fingerprint(REQUEST), 0, 1, cancelled=True)
    resumed = plan(_state(done={0, 1}, succeeded=2), JOB, fingerprint(REQUEST), 2, 7, cancelled=True)
    for decided, completed in ((fresh, 0), (resumed, 2)):
        assert decided.action is Action.CANCELLED and isinstance(decided.event, CancelledEvent)
        assert decided.event.data.completed == completed and decided.event.data.total_items == 20
        assert decided.state is not None and decided.state.phase is JobStatus.CANCELLED
        assert decided.state.terminal == decided.event.model_dump(mode="json") and not decided.state.done
    # A finished job's re-send is answered from its state even if a cancel came later.
    finished = _state(phase=JobStatus.COMPLETED, terminal=_complete().model_dump(mode="json"))
    assert plan(finished, JOB, fingerprint(REQUEST), 2, 9, cancelled=True).action is Action.REPUBLISH


def test_a_shadow_grades_only_its_sample_the_others_are_done_before_it_starts() -> None:
    outside = {i for i, item in enumerate(JOB.items) if not sampled(JOB.job_id, item.id_alumno, 0.5)}
    assert 0 < len(outside) < len(JOB.items)  # the hash splits this job
    fresh = plan(None, JOB, fingerprint(REQUEST), 0, 1, cancelled=False, sample_rate=0.5)
    assert fresh.action is Action.GRADE and fresh.state is not None
    assert fresh.state.done == outside and fresh.unsampled == len(outside)
    resumed = plan(_state(done={0, 1}, succeeded=2), JOB, fingerprint(REQUEST), 2, 7, cancelled=False, sample_rate=0.5)
    assert resumed.state is not None and resumed.state.done == outside | {0, 1} and resumed.state.succeeded == 2
    # The live consumer (rate 1) grades every item; a cancel still wins over the sample.
    assert plan(None, JOB, fingerprint(REQUEST), 0, 1, cancelled=False).state.done == set()  # type: ignore[union-attr]
    assert plan(None, JOB, fingerprint(REQUEST), 0, 1, cancelled=True, sample_rate=0.5).action is Action.CANCELLED


def test_the_ledger_answers_cancelled_while_a_cancel_is_in_force() -> None:
    ledger, store, _, clock, metrics = _ledger()
    ledger.cancel(JOB.job_id, clock.now + 10)
    assert ledger.plan(JOB, REQUEST, 2, 7).action is Action.CANCELLED
    assert metrics.registry.get_sample_value("texteval_jobs_cancelled_total") == 1
    later = Job("school/2", JOB.items)
    ledger.cancel(later.job_id, clock.now + 10)
    clock.now += 11  # its cancel's TTL is over: the id is an ordinary one again
    assert ledger.plan(later, REQUEST, 2, 8).action is Action.GRADE
    assert store.get(later.job_id) is not None and not store.get(later.job_id).finished  # type: ignore[union-attr]


def _ledger(retention_s: float = 3600.0) -> tuple[Ledger, JobStateStore, Producer, Clock, Metrics]:
    return doubles.ledger(retention_s)


async def test_a_later_plan_of_the_same_job_ends_the_old_runs_right_to_write_its_state() -> None:
    ledger, store, producer, _, metrics = _ledger()
    assert ledger.plan(JOB, REQUEST, 2, 7).action is Action.GRADE
    old_run = Run()
    old = ledger.started(JOB.job_id, old_run)
    old_run.progress = Progress(frozenset({0, 1, 2}), 3, 0, 1.0)
    ledger.ended(old)  # aborted (a failed delivery): still tracked, its sends may be acknowledged later
    assert store.get(JOB.job_id).done == {0, 1, 2}  # type: ignore[union-attr]
    # The same record read again (its retry): a new lease; the old run's late acknowledgements no longer count.
    assert ledger.plan(JOB, REQUEST, 2, 7).action is Action.RESUME
    assert metrics.registry.get_sample_value("texteval_items_resumed_total") == 3
    new_run = Run()
    new = ledger.started(JOB.job_id, new_run)
    old_run.progress = Progress(frozenset(range(20)), 20, 0, 2.0)
    new_run.progress = Progress(frozenset(range(5)), 5, 0, 1.5)
    await ledger.save()
    assert store.get(JOB.job_id).done == set(range(5))  # type: ignore[union-attr]
    new_run.terminal = _complete()
    ledger.ended(new)
    assert store.get(JOB.job_id).phase is JobStatus.COMPLETED  # type: ignore[union-attr]
    await ledger.save()
    assert JobState.decode(producer.sent[-1][1] or b"").terminal == _complete().model_dump(mode="json")


def test_a_cancel_reaches_only_a_run_that_is_still_grading() -> None:
    ledger, *_, metrics = _ledger()
    ledger.plan(JOB, REQUEST, 2, 7)
    run = Run()
    lease = ledger.started(JOB.job_id, run)
    ledger.cancel("another job", UNTIL_S)
    assert not run.cancel_requested
    ledger.cancel(JOB.job_id, UNTIL_S)
    assert run.cancel_requested and metrics.registry.get_sample_value("texteval_jobs_cancelled_total") == 1
    ledger.ended(lease)
    ledger.cancel(JOB.job_id, UNTIL_S)  # over: nothing to stop, nothing counted
    assert metrics.registry.get_sample_value("texteval_jobs_cancelled_total") == 1


async def test_a_run_that_hit_a_bug_leaves_no_state_so_a_resend_is_graded_afresh() -> None:
    ledger, store, producer, *_ = _ledger()
    ledger.plan(JOB, REQUEST, 2, 7)
    run = Run()
    run.progress = Progress(frozenset({0}), 1, 0, 0.1)
    lease = ledger.started(JOB.job_id, run)
    ledger.ended(lease)
    ledger.failed(lease)
    assert store.get(JOB.job_id) is None
    await ledger.save()
    assert producer.sent[-1] == (JOB.job_id, None)  # a tombstone
    assert ledger.plan(JOB, REQUEST, 2, 9).action is Action.GRADE  # not skipped as a duplicate


async def test_finished_jobs_past_their_retention_are_deleted_on_a_timer_in_a_running_consumer() -> None:
    ledger, store, producer, clock, _ = _ledger(retention_s=3600.0)
    for job_id, phase in (("done", JobStatus.COMPLETED), ("running", JobStatus.PROCESSING)):
        store.put(_state(job_id=job_id, phase=phase, terminal=_complete(job_id).model_dump(mode="json")))
    await ledger.save()
    producer.sent.clear()
    clock.now += 3599.0
    await ledger.save()
    assert producer.sent == [] and store.get("done") is not None  # within the retention
    clock.now += 2.0  # past the retention, but the timer looked a moment ago: it looks once a minute
    await ledger.save()
    assert producer.sent == []
    clock.now += 60.0
    await ledger.save()
    assert producer.sent == [("done", None)]  # its tombstone: compaction removes it from the topic
    assert store.get("done") is None and store.get("running") is not None  # a running job never expires
    clock.now += 30.0
    store.put(_state(job_id="late", phase=JobStatus.COMPLETED, terminal=_complete("late").model_dump(mode="json")))
    clock.now += 3601.0
    producer.sent.clear()
    await ledger.save()
    assert ("late", None) in producer.sent
