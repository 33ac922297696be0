"""A model of a trace on the fake engine: what a policy can do, with no broker and no noise.

B6/B7 measure the consumer itself. This replays the same trace on a model of
the same engine (``concurrency`` slots, ``delay_s`` per item, a FIFO queue
inside the engine fed up to the scheduler's depth) with the consumer's own
``Picker``, in virtual time: a trace of 60 jobs takes milliseconds. It
answers what measuring cannot: how much better than ``fifo`` *any* order
could be on a given trace. Two references:

- pure shortest-remaining-first (``oldest_share`` -> 0, no FIFO floor): on
  one server it minimises the mean completion time (SRPT, Schrage 1968);
- every job with the engine to itself (``alone_mean_s``): no job ever waits
  for another, a bound no scheduler reaches once jobs overlap.

The consumer's own overhead (produce, admit, publish, read back) is not
modelled: the measured times are a little longer in both arms.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from consumer.pipeline.policy import Picker
from consumer.settings import SchedulingPolicy

PURE_SHORTEST_SHARE = 1e-9  # the Picker's FIFO floor, as good as off


@dataclass(slots=True, eq=False)
class _Job:
    seq: int
    at_s: float
    left: int  # items not finished
    queue: int  # items not yet sent to the engine

    @property
    def pending(self) -> int:
        return self.queue


def completion_times_s(
    jobs: Sequence[tuple[float, int]],
    policy: SchedulingPolicy,
    *,
    concurrency: int,
    delay_s: float,
    depth: int,
    oldest_share: float = 0.67,
) -> list[float]:
    """Each job's arrival -> last item done, for ``(arrival_s, items)`` in any order."""
    order = sorted(range(len(jobs)), key=lambda i: jobs[i][0])
    state = [_Job(i, jobs[i][0], jobs[i][1], jobs[i][1]) for i in range(len(jobs))]
    done_s = [0.0] * len(jobs)
    picker = Picker(policy, oldest_share)
    waiting: dict[_Job, None] = {}  # jobs with items to send, admission order
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
                waiting[job] = None
        while waiting and sent < depth:
            job = picker.pick(waiting)
            job.queue -= 1
            if not job.queue:
                del waiting[job]
            in_engine.append(job)
            sent += 1
        while in_engine and len(running) < concurrency:
            started += 1
            heapq.heappush(running, (now + delay_s, started, in_engine.popleft()))
    return done_s


def alone_mean_s(sizes: Sequence[int], *, concurrency: int, delay_s: float) -> float:
    """Mean completion time if every job had the engine to itself."""
    return sum(math.ceil(n / concurrency) * delay_s for n in sizes) / len(sizes)
