"""The scheduler and its policies, with the fake engine (unit tests: no broker).

Fairness (a small job behind a big one; one tenant's class behind another
tenant's flood), no starvation (the stated bound under an endless stream of
small jobs), the engine depth, cancel and abort, the ETA, and an event loop
that stays responsive while a big job is fed. The picker on counts alone:
test_scheduler_policy.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from consumer.contract import Item, ItemStatus
from consumer.engine.base import GradeOutcome
from consumer.engine.fake import FakeEngine
from consumer.metrics import Metrics
from consumer.pipeline.intake import Job
from consumer.pipeline.jobs import JobRun
from consumer.pipeline.policy import SchedulingPolicy
from consumer.pipeline.scheduler import TENANT_SERIES, Scheduler, Ticket
from consumer.pipeline.sinks import Sinks


def items(n: int, tag: str = "t") -> list[Item]:
    return [
        Item(id_alumno=f"A{i}", curso="3r ESO", consigna="Explica la fotosíntesi.", respuesta=f"{tag} resposta {i}")
        for i in range(n)
    ]


class Log:
    """What came back, in order: (job, index)."""

    def __init__(self) -> None:
        self.done: list[tuple[str, int]] = []
        self.small_at = 0  # results before the small job was submitted

    def deliver(self, job: str) -> Callable[[int, GradeOutcome], None]:
        def on_done(index: int, outcome: GradeOutcome) -> None:
            assert outcome.status is ItemStatus.OK
            self.done.append((job, index))

        return on_done

    def last(self, job: str) -> int:
        """Position of the job's last result in the overall order."""
        return max(i for i, (name, _) in enumerate(self.done) if name == job)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


# --- the scheduler with the fake engine ----------------------------------------------


async def small_behind_big(policy: SchedulingPolicy) -> Log:
    engine = FakeEngine(delay_s=0.005, max_concurrency=4)
    scheduler = Scheduler(engine, Metrics(), policy=policy, depth=4, oldest_share=0.5)
    log = Log()
    scheduler.submit("big", items(60), log.deliver("big"))
    await until(lambda: len(log.done) >= 8)
    log.small_at = len(log.done)
    scheduler.submit("small", items(5), log.deliver("small"))
    await until(lambda: len(log.done) == 65)
    assert engine.max_in_flight <= 4
    return log


async def test_fair_lets_a_small_job_overtake_and_fifo_does_not() -> None:
    # Behind at most the engine's depth: the big job has slack to spare, the small one goes at full rate.
    fair = await small_behind_big(SchedulingPolicy.FAIR)
    assert fair.last("small") < fair.small_at + 4 + 5 + 1
    assert (await small_behind_big(SchedulingPolicy.FIFO)).last("small") == 64  # after the whole big job


async def test_one_tenants_class_is_not_behind_another_tenants_flood() -> None:
    async def school_last(by_tenant: bool) -> tuple[int, int]:
        """(position of the class's last result, results before it was submitted)."""
        engine = FakeEngine(delay_s=0.002, max_concurrency=4)
        scheduler = Scheduler(engine, Metrics(), depth=4, by_tenant=by_tenant)
        log = Log()
        for i in range(10):
            scheduler.submit(f"platform/job-{i}", items(20), log.deliver(f"platform-{i}"))
        await until(lambda: len(log.done) >= 8)
        log.small_at = len(log.done)
        scheduler.submit("school-7/class", items(20), log.deliver("school"))
        await until(lambda: len(log.done) == 220)
        return log.last("school"), log.small_at

    # By tenant: the class takes every other dispatch, behind at most the engine's depth.
    last, at = await school_last(by_tenant=True)
    assert last < at + 4 + 2 * 20 + 1
    # One pool: the platform's equal-size jobs are older, so the class comes last.
    last, _ = await school_last(by_tenant=False)
    assert last == 219


async def test_the_eta_counts_the_other_tenants_share() -> None:
    engine = FakeEngine(delay_s=10.0)
    for tenants, first_s, second_s in ((("a", "b"), 40.5, 40.5), (("a", "a"), 20.5, 40.5)):
        scheduler = Scheduler(engine, Metrics(), depth=1, tenant_weights={"b": 1.0})
        scheduler.meter.busy(0.0)
        for t in range(1, 21):  # a measured engine: 100 items/s, 0.5 s per item
            scheduler.meter.record(t * 0.01, 0.5)
        first = scheduler.submit(f"{tenants[0]}/1", items(2000), lambda i, o: None)
        second = scheduler.submit(f"{tenants[1]}/2", items(2000), lambda i, o: None)
        # Two tenants: each gets half until both end; one tenant: the older job first, as under FIFO.
        assert scheduler.estimate_s(first) == pytest.approx(first_s, abs=0.02)
        assert scheduler.estimate_s(second) == pytest.approx(second_s, abs=0.02)
        scheduler.release(first)
        scheduler.release(second)


async def big_job_in_a_stream_of_small_ones(big_items: int, depth: int, share: float) -> tuple[int, int]:
    """(dispatches until the big job's last result, small items served meanwhile)."""
    engine = FakeEngine()
    scheduler = Scheduler(engine, Metrics(), policy=SchedulingPolicy.FAIR, depth=depth, oldest_share=share)
    finished_at: list[int] = []
    small_ids: list[str] = []
    small: list[Ticket] = []
    served = 0

    def more_small(index: int, outcome: GradeOutcome) -> None:
        nonlocal served
        served += 1
        for _ in range(2):  # the stream only grows: a small job is always waiting
            small_ids.append(f"small-{len(small_ids)}")
            small.append(scheduler.submit(small_ids[-1], items(1), more_small))

    def big(index: int, outcome: GradeOutcome) -> None:
        finished_at.append(engine.calls)

    scheduler.submit("big", items(big_items), big)
    more_small(0, GradeOutcome.ok(3, "x", prompt_sha256="", latency_ms=0.0))
    await until(lambda: len(finished_at) == big_items)
    small_served = served - 1
    for ticket in small:
        scheduler.release(ticket)
    return max(finished_at), small_served


@pytest.mark.parametrize("share", [0.5, 0.25])
async def test_no_job_starves_under_an_endless_stream_of_small_jobs(share: float) -> None:
    """The bound of policy.py: the big job's last item is dispatched within
    (N + W) / oldest_share dispatches (W = 0 here); pure shortest-first would never serve it."""
    big_items, depth = 40, 2
    dispatches, small_served = await big_job_in_a_stream_of_small_ones(big_items, depth, share)
    # The small jobs took every slot the policy gives them ...
    assert small_served >= 0.9 * big_items * (1 - share) / share
    # ... and still the big job got its share.
    assert dispatches <= big_items / share + depth + 1


async def test_depth_bounds_the_engine_and_none_puts_everything_in_flight() -> None:
    engine = FakeEngine(delay_s=0.01)
    scheduler = Scheduler(engine, Metrics(), depth=5)
    log = Log()
    scheduler.submit("a", items(30), log.deliver("a"))
    scheduler.submit("b", items(30), log.deliver("b"))
    await until(lambda: len(log.done) == 60)
    assert engine.max_in_flight == 5
    assert sorted(log.done) == sorted([("a", i) for i in range(30)] + [("b", i) for i in range(30)])

    unbounded = FakeEngine(delay_s=0.01)
    scheduler = Scheduler(unbounded, Metrics(), depth=None)
    log = Log()
    scheduler.submit("a", items(30), log.deliver("a"))
    await until(lambda: len(log.done) == 30)
    assert unbounded.max_in_flight == 30


async def test_release_drops_waiting_items_at_once_and_aborts_the_running_ones() -> None:
    engine = FakeEngine(delay_s=5.0)
    metrics = Metrics()
    scheduler = Scheduler(engine, metrics, depth=4)
    log = Log()
    doomed = scheduler.submit("doomed", items(1000), log.deliver("doomed"))
    await until(lambda: scheduler.in_engine == 4)
    assert scheduler.waiting == 996
    assert metrics.registry.get_sample_value("texteval_scheduler_items_waiting") == 996
    assert scheduler.release(doomed) == 996
    assert scheduler.waiting == 0 and doomed.pending == 0  # at once, before any task has run
    assert scheduler.release(doomed) == 0  # idempotent
    await until(lambda: scheduler.in_engine == 0)  # its engine work was cancelled, not awaited
    assert engine.in_flight == 0 and log.done == []
    assert metrics.registry.get_sample_value("texteval_engine_queue_depth") == 0

    # release(ticket): a cancelled job's items leave (JobRun.request_cancel); other jobs go on.
    quick = FakeEngine(delay_s=0.01)
    scheduler = Scheduler(quick, Metrics(), depth=2)
    gone = scheduler.submit("gone", items(50), log.deliver("gone"))
    scheduler.submit("kept", items(5), log.deliver("kept"))
    assert scheduler.release(gone) == 50 and scheduler.release(gone) == 0
    await until(lambda: len(log.done) == 5)
    assert {job for job, _ in log.done} == {"kept"}


async def test_an_engine_that_raises_gives_an_error_outcome_not_a_hang() -> None:
    class Raising(FakeEngine):
        async def grade(self, item: Item, request_id: str) -> GradeOutcome:
            raise RuntimeError("broken")

    outcomes: list[GradeOutcome] = []
    scheduler = Scheduler(Raising(), Metrics(), depth=2)
    scheduler.submit("j", items(3), lambda index, outcome: outcomes.append(outcome))
    await until(lambda: len(outcomes) == 3)
    assert all(o.status is ItemStatus.ERROR and o.nota is None for o in outcomes)
    assert outcomes[0].error is not None and outcomes[0].error.code.value == "engine_error"


async def test_the_eta_is_the_jobs_share_not_the_whole_engines_rate() -> None:
    engine = FakeEngine(delay_s=10.0)
    for policy, small_beats_big in ((SchedulingPolicy.FAIR, True), (SchedulingPolicy.FIFO, False)):
        scheduler = Scheduler(engine, Metrics(), policy=policy, depth=1, oldest_share=0.5)
        scheduler.meter.busy(0.0)
        for t in range(1, 21):  # a measured engine: 100 items/s, 0.5 s per item
            scheduler.meter.record(t * 0.01, 0.5)
        assert scheduler.meter.items_per_s == pytest.approx(100.0)
        big = scheduler.submit("big", items(2000), lambda i, o: None)
        small = scheduler.submit("small", items(20), lambda i, o: None)
        big_s, small_s = scheduler.estimate_s(big), scheduler.estimate_s(small)
        if small_beats_big:
            assert small_s == pytest.approx(20 / 100 + 0.5)  # every dispatch: the big job has slack to spare
            assert big_s == pytest.approx(2020 / 100 + 0.5)
        else:
            assert small_s == pytest.approx(2020 / 100 + 0.5)  # behind the whole big job
            assert big_s == pytest.approx(2000 / 100 + 0.5)
        scheduler.release(big)
        scheduler.release(small)


class SlowTokenizer(FakeEngine):
    """The fake engine with a synchronous encode twice as slow as the real one measured
    (4.2 s for 2000 x 7,000 characters: 0.3 us per character)."""

    s_per_char = 0.6e-6
    encoded = 0

    async def grade(self, item: Item, request_id: str) -> GradeOutcome:
        # On purpose: blocks the loop, like tokenizing inside grade().
        time.sleep(self.s_per_char * len(item.respuesta))  # noqa: ASYNC251
        self.encoded += 1
        return await super().grade(item, request_id)


@pytest.mark.parametrize("depth", [64, None])
async def test_the_event_loop_stays_responsive_while_a_big_job_is_fed(depth: int | None) -> None:
    engine = SlowTokenizer(delay_s=0.05, max_concurrency=64)
    scheduler = Scheduler(engine, Metrics(), depth=depth)
    done = 0
    gaps: list[float] = []
    encodes_between_beats: list[int] = []

    def count(index: int, outcome: GradeOutcome) -> None:
        nonlocal done
        done += 1

    async def heartbeat() -> None:
        last, encoded = time.monotonic(), engine.encoded
        while True:
            await asyncio.sleep(0.001)
            now = time.monotonic()
            gaps.append(now - last)
            encodes_between_beats.append(engine.encoded - encoded)
            last, encoded = now, engine.encoded

    big = [item.model_copy(update={"respuesta": "paraula " * 875}) for item in items(500)]  # 7,000 characters
    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.01)
    scheduler.submit("big", big, count)  # tokenized up front, this would block the loop 2.1 s
    await until(lambda: done == 500, timeout_s=30)
    beat.cancel()
    # A few texts' encodes between two heartbeats, not 500: 16,000 characters
    # a turn (3 of these texts), and a timer that just missed a turn waits
    # two or three more; the loop blocks tens of ms at most instead of 2.1 s.
    assert max(encodes_between_beats) <= 12, max(encodes_between_beats)
    assert gaps  # the heartbeat ran throughout (wall-clock gaps are not asserted: the machine is shared)


# --- a job run ends, its items leave the scheduler ---------------------------------------


class NullProducer:
    """Acknowledges every send at once (a unit test of JobRun needs no broker)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, **kw: Any) -> Any:
        self.sent.append(json.loads(value or b"null"))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def job_run(job_id: str, n: int, scheduler: Scheduler, engine: FakeEngine, producer: NullProducer) -> JobRun:
    sinks = Sinks(producer, results_topic="r", progress_topic="p", dlt_topic="d", group_id="g")  # type: ignore[arg-type]
    return JobRun(
        Job(job_id, tuple(items(n, job_id))),
        engine=engine,
        sinks=sinks,
        metrics=Metrics(),
        scheduler=scheduler,
        batch_size=10,
        flush_s=0.05,
    )


async def test_an_aborted_job_run_releases_its_items_and_a_finished_one_reports_its_duration() -> None:
    engine = FakeEngine(delay_s=0.02, max_concurrency=8)
    scheduler = Scheduler(engine, Metrics(), depth=8)
    producer = NullProducer()
    big = job_run("big", 2000, scheduler, engine, producer)
    task = asyncio.create_task(big.run())
    await until(lambda: scheduler.in_engine == 8)
    assert scheduler.waiting > 1900
    task.cancel()  # a revoke or a shutdown
    await asyncio.wait([task])
    assert scheduler.waiting == 0  # released at once
    await until(lambda: scheduler.in_engine == 0)

    small = job_run("small", 5, scheduler, engine, producer)
    await small.run()
    events = [m for m in producer.sent if m.get("job_id") == "small" and "event" in m]
    assert [e["event"] for e in events] == ["accepted", "batch_complete", "complete"]
    assert events[1]["data"]["progress"]["estimated_remaining_seconds"] == 0
    histogram = small._metrics.registry.get_sample_value("texteval_job_duration_seconds_count", {"size": "1-20"})
    assert histogram == 1


async def test_items_waiting_by_tenant_keep_a_bounded_number_of_series() -> None:
    metrics = Metrics()
    scheduler = Scheduler(FakeEngine(delay_s=5.0), metrics, depth=1)

    def series() -> dict[str, float]:
        return {
            sample.labels["tenant"]: sample.value
            for family in metrics.registry.collect()
            if family.name == "texteval_scheduler_tenant_items_waiting"
            for sample in family.samples
        }

    assert series() == {"_other": 0.0}  # there from the start, at 0
    tickets = {}
    for i in range(1, 13):  # 12 schools, school-i with 10 * i items
        tickets[f"school-{i}/term-1"] = scheduler.submit(f"school-{i}/term-1", items(10 * i), lambda i, o: None)
    tickets["no-tenant-id"] = scheduler.submit("no-tenant-id", items(5), lambda i, o: None)
    shown = series()
    assert len(shown) == TENANT_SERIES + 1
    assert {f"school-{i}" for i in range(3, 13)} <= shown.keys()  # the ten with the most waiting
    assert shown["_other"] == 10 + 20 + 5  # school-1, school-2 and the tenant-less job
    for i in range(3, 13):
        scheduler.release(tickets[f"school-{i}/term-1"])
    # Cancelled tenants' series are gone; the small ones now have their own.
    assert series() == {"school-1": 10.0, "school-2": 20.0, "_none": 5.0, "_other": 0.0}
    scheduler.release(tickets["school-1/term-1"])
    scheduler.release(tickets["school-2/term-1"])
    scheduler.release(tickets["no-tenant-id"])
    assert series() == {"_other": 0.0}
