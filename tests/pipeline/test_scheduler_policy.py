"""The picker on counts (no engine, no tasks): tenants by weight, then jobs within the ageing bound.

Exact dispatch orders and counts: every figure here follows from the rules
in consumer/pipeline/policy.py, by hand.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from pydantic import ValidationError

from consumer.pipeline.policy import Picker, SchedulingPolicy, TenantShares
from consumer.settings import Settings

Arrivals = Mapping[int, list[tuple["Job", str | None]]]


class Job:
    def __init__(self, seq: int, pending: int) -> None:
        self.seq, self.pending = seq, pending

    def __repr__(self) -> str:
        return f"Job({self.seq})"


def drain(picker: Picker[Job], arrivals: Arrivals) -> list[Job]:
    """Dispatch one item at a time; ``arrivals[d]`` are added just before dispatch number d + 1."""
    order: list[Job] = []
    last_arrival = max(arrivals, default=0)
    d = 0
    while picker or d <= last_arrival:
        for job, tenant in arrivals.get(d, []):
            picker.add(job, tenant)
        if picker:
            job = picker.take()
            job.pending -= 1
            order.append(job)
        d += 1
    return order


def positions(order: list[Job], job: Job) -> list[int]:
    """1-based dispatch numbers of the job's items."""
    return [i + 1 for i, j in enumerate(order) if j is job]


# --- between tenants ----------------------------------------------------------------


def test_tenants_alternate_by_weight_and_an_idle_tenant_banks_no_credit() -> None:
    equal: TenantShares[str] = TenantShares()
    equal.activate("a")
    equal.activate("b")
    assert [equal.take() for _ in range(4)] == ["a", "b", "a", "b"]

    weighted: TenantShares[str] = TenantShares({"a": 2})
    weighted.activate("a")
    weighted.activate("b")
    picks = [weighted.take() for _ in range(300)]
    assert picks[:6] == ["a", "b", "a", "a", "b", "a"]
    assert picks.count("a") == 200 and picks.count("b") == 100

    # "a" alone for 100 dispatches, then "b" starts waiting: it takes turns, it does not get 100 in a row.
    late: TenantShares[str] = TenantShares()
    late.activate("a")
    for _ in range(100):
        late.take()
    late.activate("b")
    assert [late.take() for _ in range(4)] == ["a", "b", "a", "b"]
    with pytest.raises(ValueError, match="> 0"):
        TenantShares({"a": 0})


def test_a_tenant_with_one_class_is_not_behind_another_tenants_thirty_jobs() -> None:
    """B11 on counts: tenant A's 30 jobs of 200, tenant B's one job of 200 after 100 dispatches."""

    def run(by_tenant: bool) -> list[int]:
        flood = [Job(i, 200) for i in range(30)]
        school = Job(30, 200)
        arrivals: dict[int, list[tuple[Job, str | None]]] = {0: [(job, "platform") for job in flood]}
        arrivals[100] = [(school, "school")]
        return positions(drain(Picker(SchedulingPolicy.FAIR, 0.7, by_tenant=by_tenant), arrivals), school)

    shared = run(by_tenant=True)
    # From dispatch 101 the two tenants alternate (A first: it was waiting first): B gets every other one.
    assert shared == list(range(102, 502, 2))
    # One pool (the policy before tenants): equal sizes, so the older jobs go first and B waits for all of A.
    assert run(by_tenant=False) == list(range(6001, 6201))


def test_weights_split_the_engine_and_tenant_less_jobs_are_one_pseudo_tenant() -> None:
    a, b = Job(1, 300), Job(2, 300)
    order = drain(Picker(SchedulingPolicy.FAIR, tenant_weights={"a": 2}), {0: [(a, "a"), (b, "b")]})
    assert positions(order, a)[-1] == 450 and order[:450].count(b) == 150  # 2:1 while both wait

    # Two tenant-less jobs share one pseudo-tenant's share against tenant "t".
    x, y, t = Job(1, 100), Job(2, 100), Job(3, 100)
    order = drain(Picker(SchedulingPolicy.FAIR), {0: [(x, None), (y, None), (t, "t")]})
    assert order[:200].count(t) == 100  # half of the dispatches while it waits
    assert positions(order, t)[-1] == 200


def test_fifo_is_arrival_order_across_tenants() -> None:
    a, b, c = Job(1, 3), Job(2, 2), Job(3, 1)
    order = drain(Picker(SchedulingPolicy.FIFO, tenant_weights={"y": 5}), {0: [(a, "x"), (b, "y"), (c, None)]})
    assert order == [a, a, a, b, b, c]


# --- inside a tenant ----------------------------------------------------------------


def test_a_class_behind_two_big_jobs_goes_at_full_rate_within_their_slack() -> None:
    big1, big2, small = Job(1, 2000), Job(2, 2000), Job(3, 200)
    order = drain(Picker(SchedulingPolicy.FAIR, 0.7), {0: [(big1, "s"), (big2, "s")], 100: [(small, "s")]})
    # The first big job had 100 of 2000/0.7 dispatches' room used: the class takes the next 200 in a row.
    assert positions(order, small) == list(range(101, 301))
    assert positions(order, big1)[-1] == 2200 and positions(order, big2)[-1] == 4200


def test_no_job_starves_the_bound_is_exact_under_an_endless_stream_of_small_jobs() -> None:
    """J's last item by dispatch D + (W + N) / share, here 0 + (0 + 40) / 0.5 = 80, with a one-item job
    arriving before every dispatch; pure shortest-first would never serve it."""
    for share, bound in ((0.5, 80), (0.25, 160), (0.7, 57)):
        big = Job(0, 40)
        arrivals: dict[int, list[tuple[Job, str | None]]] = {0: [(big, None)]}
        for d in range(1, 400):
            arrivals[d] = [(Job(d, 1), None)]
        order = drain(Picker(SchedulingPolicy.FAIR, share), arrivals)
        assert positions(order, big)[-1] == bound  # it used all its slack for the small ones, and no more
        assert len(order) == 439


def test_every_deadline_holds_for_random_arrivals() -> None:
    """The bound for every job of random traces: last item by D + (W + N) / share of its tenant's dispatches."""
    rng = random.Random(7)
    for _ in range(30):
        share = rng.choice([0.3, 0.5, 0.7, 0.9])
        picker: Picker[Job] = Picker(SchedulingPolicy.FAIR, share)
        deadline: dict[Job, float] = {}
        last: dict[Job, int] = {}
        d = 0
        for seq in range(40):
            for _ in range(rng.randint(0, 30)):
                if picker:
                    job = picker.take()
                    job.pending -= 1
                    d += 1
                    last[job] = d
            job = Job(seq, rng.choice([1, 5, 20, 200]))
            waiting = sum(j.pending for j in deadline if j.pending)
            deadline[job] = d + (waiting + job.pending) / share
            picker.add(job, "one")
        while picker:
            job = picker.take()
            job.pending -= 1
            d += 1
            last[job] = d
        assert all(last[job] <= deadline[job] + 1e-9 for job in deadline)


def test_the_fluid_model_matches_the_picker() -> None:
    """``horizons`` (the ETA's model) against the dispatches themselves."""
    for pending, tenants, share in (
        ([2000, 2000, 200], ["s", "s", "s"], 0.7),
        ([10, 5], [None, None], 0.5),
        ([600, 50, 300, 5], ["a", "a", "b", None], 0.7),
        ([40, 30, 20, 10], ["a"] * 4, 0.3),
    ):
        jobs = [Job(i, n) for i, n in enumerate(pending)]
        picker: Picker[Job] = Picker(SchedulingPolicy.FAIR, share)
        for job, tenant in zip(jobs, tenants, strict=True):
            picker.add(job, tenant)
        model = picker.horizons()
        order = drain(picker, {})
        for job in jobs:
            assert model[job] == pytest.approx(positions(order, job)[-1], abs=2), (pending, job)
    fifo: Picker[Job] = Picker(SchedulingPolicy.FIFO)
    a, b = Job(1, 10), Job(2, 5)
    fifo.add(a, "x")
    fifo.add(b, "y")
    assert fifo.horizons() == {a: 10, b: 15}


def test_a_released_job_leaves_its_tenant_and_its_tenant_leaves_when_empty() -> None:
    picker: Picker[Job] = Picker(SchedulingPolicy.FAIR)
    gone, kept = Job(1, 50), Job(2, 5)
    picker.add(gone, "a")
    picker.add(kept, "b")
    picker.remove(gone)
    picker.remove(gone)  # idempotent
    assert len(picker) == 1 and picker.waiting_by_tenant() == {"b": 5}
    assert drain(picker, {}) == [kept] * 5
    assert len(picker.tenants) == 0


# --- the setting -------------------------------------------------------------------


def test_tenant_weights_are_parsed_and_a_malformed_value_is_refused() -> None:
    settings = Settings(_env_file=None, SCHEDULER_TENANT_WEIGHTS=" school-42=2, school-7=1 ")  # type: ignore[call-arg]
    assert settings.scheduler.tenant_weights == {"school-42": 2.0, "school-7": 1.0}
    assert Settings(_env_file=None).scheduler.tenant_weights == {}  # type: ignore[call-arg]
    for bad in ("school-42", "a=0", "a=-1", "a=x", "=2", "a=1,a=2", "a/b=1", "a=inf", "a=nan"):
        with pytest.raises(ValidationError, match="SCHEDULER_TENANT_WEIGHTS"):
            Settings(_env_file=None, SCHEDULER_TENANT_WEIGHTS=bad)  # type: ignore[call-arg]
