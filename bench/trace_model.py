"""A model of a trace on the fake engine: what a policy can do, with no broker and no noise.

B6/B7/B11 measure the consumer itself. This replays the same trace on a model of
the same engine (``concurrency`` slots, ``delay_s`` per item, a FIFO queue
inside the engine fed up to the scheduler's depth) with the consumer's own
``Picker`` (tenants, then jobs), in virtual time: a trace of 60 jobs takes
milliseconds. It answers what measuring cannot: how much better than ``fifo``
*any* order could be on a given trace, and how a rule compares with another
before it is measured. References:

- pure shortest-remaining-first (``oldest_share`` -> 0, no ageing bound): on
  one server it minimises the mean completion time (SRPT, Schrage 1968);
- every job with the engine to itself (``alone_mean_s``): no job ever waits
  for another, a bound no scheduler reaches once jobs overlap;
- ``Rule.FIXED_SHARE``: issue 12's rule (a fixed ``oldest_share`` of the
  dispatches to the oldest job, the rest to the shortest, one pool for every
  tenant), kept here only to compare with the consumer's rule;
- ``Rule.LEAST_SERVED``: least attained service below the oldest job (the
  other candidate tried for the jobs below the oldest).

The consumer's own overhead (produce, admit, publish, read back) is not
modelled: the measured times are a little longer in both arms.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from consumer.pipeline.policy import Picker
from consumer.settings import SchedulingPolicy
from consumer.tenants import tenant_of

PURE_SHORTEST_SHARE = 1e-9  # the ageing bound, as good as off


class Rule(StrEnum):
    CONSUMER = "consumer"  # consumer.pipeline.policy.Picker: tenants, then shortest within deadlines
    FIXED_SHARE = "fixed_share"  # issue 12: oldest_share to the oldest, the rest to the shortest; no tenants
    LEAST_SERVED = "least_served"  # oldest_share to the oldest, the rest to the least served; no tenants


@dataclass(slots=True, eq=False)
class _Job:
    seq: int
    at_s: float
    size: int
    left: int  # items not finished
    queue: int  # items not yet sent to the engine

    @property
    def pending(self) -> int:
        return self.queue

    @property
    def served(self) -> int:
        return self.size - self.queue


class _Picks(Protocol):
    def __len__(self) -> int: ...
    def add(self, job: _Job, tenant: str | None = None) -> None: ...
    def take(self) -> _Job: ...


class _SplitPicker:
    """Issue 12's fixed split (and its least-served variant), for comparison: one pool, no tenants."""

    def __init__(self, oldest_share: float, least_served: bool) -> None:
        self.oldest_share, self.least_served = oldest_share, least_served
        self._credit = 0.0
        self._waiting: dict[_Job, None] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, job: _Job, tenant: str | None = None) -> None:
        self._waiting[job] = None

    def take(self) -> _Job:
        oldest = next(iter(self._waiting))
        self._credit += self.oldest_share
        if self._credit >= 1.0:
            self._credit -= 1.0
            job = oldest
        elif self.least_served:
            job = min(self._waiting, key=lambda j: (j.served, j.pending, j.seq))
        else:
            job = min(self._waiting, key=lambda j: (j.pending, j.seq))
        if job.pending <= 1:
            del self._waiting[job]
        return job


# A job of a trace: (arrival_s, items) or (arrival_s, items, job_id); a job's tenant is tenant_of(job_id).
TraceEntry = tuple[float, int] | tuple[float, int, str]


def completion_times_s(
    jobs: Sequence[TraceEntry],
    policy: SchedulingPolicy,
    *,
    concurrency: int,
    delay_s: float,
    depth: int,
    oldest_share: float = 0.67,
    rule: Rule = Rule.CONSUMER,
    tenant_weights: Mapping[str, float] | None = None,
    by_tenant: bool = True,
) -> list[float]:
    """Each job's arrival -> last item done, for trace entries in any order."""
    order = sorted(range(len(jobs)), key=lambda i: jobs[i][0])
    state = [_Job(i, jobs[i][0], jobs[i][1], jobs[i][1], jobs[i][1]) for i in range(len(jobs))]
    tenants = [tenant_of(entry[2]) if len(entry) > 2 else None for entry in jobs]
    done_s = [0.0] * len(jobs)
    waiting: _Picks
    if rule is Rule.CONSUMER or policy is SchedulingPolicy.FIFO:
        waiting = Picker(policy, oldest_share, tenant_weights=tenant_weights, by_tenant=by_tenant)
    else:
        waiting = _SplitPicker(oldest_share, least_served=rule is Rule.LEAST_SERVED)
    in_engine: deque[_Job] = deque()  # sent, not started: the engine's own FIFO queue
    running: list[tuple[float, int, _Job]] = []  # (ends at, tie-break, job)
    sent = started = 0
    next_arrival = 0
    while next_arrival < len(order) or running:
        arrival_s = jobs[order[next_arrival]][0] if next_arrival < len(order) else math.inf
        if running and running[0][0] < arrival_s:
            now, _, job = heapq.heappop(running)
            sent -= 1
            job.left -= 1
            if job.left == 0:
                done_s[job.seq] = now - job.at_s
        else:
            now, job = arrival_s, state[order[next_arrival]]
            next_arrival += 1
            if job.queue:  # an empty job is done as it comes (its time stays 0)
                waiting.add(job, tenants[job.seq])
        while waiting and sent < depth:
            job = waiting.take()
            job.queue -= 1
            in_engine.append(job)
            sent += 1
        while in_engine and len(running) < concurrency:
            started += 1
            heapq.heappush(running, (now + delay_s, started, in_engine.popleft()))
    return done_s


def alone_s(size: int, *, concurrency: int, delay_s: float) -> float:
    """A job's completion time with the engine to itself."""
    return math.ceil(size / concurrency) * delay_s


def alone_mean_s(sizes: Sequence[int], *, concurrency: int, delay_s: float) -> float:
    """Mean completion time if every job had the engine to itself."""
    return sum(alone_s(n, concurrency=concurrency, delay_s=delay_s) for n in sizes) / len(sizes)
