"""Which job's next item goes to the engine when a slot frees, and how long a job will take.

``fifo``: the oldest job with items waiting, always (today's behaviour: the
engine serves whole jobs in arrival order).

``fair``: shortest-remaining-job-first with a FIFO floor. Of every dispatch,
a share ``oldest_share`` (default 1/2) goes to the oldest waiting job, and
the rest to the job with the fewest items still waiting (ties: the older).
Shortest-remaining-first minimises mean completion time (SRPT, Schrage
1968), and under heavy-tailed job sizes the big jobs barely notice it
(Bansal & Harchol-Balter, SIGMETRICS 2001) - which is what end-of-term
traffic looks like: a few 2000-text batches and many classes of 20. Pure
SRPT starves a big job under a steady stream of small ones; the floor is
the ageing that prevents it, with a bound that does not depend on the
stream:

    Every job admitted before J, and J itself, is served by the FIFO share
    whenever it is the oldest waiting, so at least ``oldest_share`` of all
    dispatches go to J or to jobs older than J. If W items of older jobs
    were waiting when J arrived (N items in J), J's last item is dispatched
    within (W + N) / oldest_share dispatches: at most 1 / oldest_share
    (2x at the default) of the time FIFO would take, plus one engine
    latency, however many small jobs keep arriving.

Among jobs of equal size the two shares agree (the oldest is also the
shortest once it has started), so big jobs still finish one after another
as under FIFO instead of all at the end as under processor sharing (round
robin, VTC): that is what keeps a big job's slowdown against FIFO small.

Everything here works on counts only (no tasks, no engine), so it is
tested and benchmarked on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from consumer.settings import SchedulingPolicy

__all__ = ["Picker", "SchedulingPolicy", "dispatch_horizons"]


class Waiting(Protocol):
    """A job as the picker sees it."""

    @property
    def seq(self) -> int: ...  # admission order

    @property
    def pending(self) -> int: ...  # items not yet sent to the engine


W = TypeVar("W", bound=Waiting)


class Picker:
    """Chooses among jobs with items waiting, given in admission order."""

    def __init__(self, policy: SchedulingPolicy, oldest_share: float = 0.5) -> None:
        if not 0.0 < oldest_share <= 1.0:
            raise ValueError(f"oldest_share must be in (0, 1], not {oldest_share}")
        self.policy = policy
        self.oldest_share = 1.0 if policy is SchedulingPolicy.FIFO else oldest_share
        self._credit = 0.0  # deterministic interleaving: no randomness, reproducible runs

    def pick(self, waiting: Sequence[W] | dict[W, None]) -> W:
        """``waiting`` is non-empty and in admission order (O(1) oldest, O(jobs) shortest)."""
        oldest = next(iter(waiting))
        if self.oldest_share >= 1.0:
            return oldest
        self._credit += self.oldest_share
        if self._credit >= 1.0:
            self._credit -= 1.0
            return oldest
        return min(waiting, key=lambda job: (job.pending, job.seq))


def dispatch_horizons(pending: Sequence[int], oldest_share: float) -> list[float]:
    """Fluid model of the picker: dispatches until each job's last item is sent.

    ``pending`` is in admission order. The oldest job drains at
    ``oldest_share`` of the dispatch rate, the shortest at the rest (the
    oldest takes all when it is also the shortest); a phase ends when a
    job empties or the oldest becomes the shortest. O(jobs^2): jobs in a
    process number in the tens.
    """
    left = [float(p) for p in pending]
    done_at = [0.0] * len(left)
    active = [i for i, p in enumerate(left) if p > 0]
    now = 0.0
    while active:
        oldest = active[0]
        shortest = min(active, key=lambda i: (left[i], i))
        if shortest == oldest or oldest_share >= 1.0:
            rates = {oldest: 1.0}
        else:
            rates = {oldest: oldest_share, shortest: 1.0 - oldest_share}
        step = min(left[i] / rate for i, rate in rates.items())
        if len(rates) == 2 and oldest_share > 0.5:
            # The oldest drains faster than the shortest: it may become the shortest first.
            step = min(step, (left[oldest] - left[shortest]) / (2 * oldest_share - 1.0))
        now += step
        for i, rate in rates.items():
            left[i] -= rate * step
        for i in rates:
            if left[i] <= 1e-9:
                done_at[i] = now
                active.remove(i)
    return done_at
