"""Which job's next item goes to the engine when a slot frees, and how long a job will take.

Two levels: first a tenant (a school: the first ``/``-segment of the job
id, ``consumer.tenants.tenant_of``), then one of its jobs.

**Between tenants** (``fair``): each tenant with items waiting gets a share
of the dispatches in proportion to its weight (1 unless configured;
tenant-less jobs are one pseudo-tenant). A platform that drops 30 jobs gets
one tenant's share, not 30 jobs' worth: fair share per client, as in VTC
("Fairness in Serving Large Language Models", OSDI'24). The rule is
weighted fair queueing on dispatch counts: each tenant keeps a virtual
finish tag that grows by ``1 / weight`` per dispatch and the smallest tag
goes next (ties: the tenant waiting longest). A tenant that starts waiting
takes the smallest tag among those waiting (VTC's counter lift), so time
spent idle is not banked as credit, and it waits at most one dispatch per
other waiting tenant for its first turn. Any tenant with items waiting gets
at least ``w_t / sum of the waiting tenants' weights`` of the dispatches,
give or take one.

**Inside a tenant** (``fair``): shortest-remaining-job-first (SRPT, Schrage
1968: it minimises mean completion time; under heavy-tailed sizes the big
jobs barely notice, Bansal & Harchol-Balter 2001), held to one ageing
bound. When a job J arrives, its deadline is set to

    deadline_J = D + (W + N) / oldest_share

in the tenant's dispatch count: D dispatches so far, W of the tenant's
items already waiting, N items in J. FIFO would dispatch J's last item at
D + W + N (the backlog ahead of a new job is the same for every
work-conserving order), so the deadline is ``1 / oldest_share`` times
FIFO's wait (1.43x at the default 0.7, ``SCHEDULER_OLDEST_SHARE``). Each dispatch goes to the shortest
job unless that would make some job miss its deadline: with the jobs in
deadline order, a job's *slack* is its deadline minus the dispatches it
would need if served earliest-deadline-first from now on; serving a job
later in that order costs every job before it one unit of slack, so the
pick is the shortest job among those up to the first one with no slack
left (<1). Earliest-deadline-first is always allowed and keeps every slack,
and a new job's deadline leaves all others feasible (its W + N backlog
already counts them and it adds (W + N)(1/share - 1) of room), so:

    **No job starves.** J's last item is dispatched within
    (W + N) / oldest_share of its tenant's dispatches, however many small
    jobs keep arriving; the tenant gets at least w_t / sum(w) of all
    dispatches while it has items waiting. So J's last item leaves within
    (W + N) / oldest_share * sum(w) / w_t dispatches, plus one engine latency.

This replaces the fixed split of issue 12 (``oldest_share`` of every
dispatch to the oldest job, the rest to the shortest) with the same bound:
the fixed split gave a 200-item class behind two 2000-item jobs only the
third of dispatches the oldest left, even though the oldest job had slack
to spare; the deadline rule lets it through at full rate while the big
job's bound holds (bench/trace_model.py and B7 measure both).

``fifo``: the oldest job with items waiting, always, across tenants (the
reference arm: the engine serves whole jobs in arrival order).

Everything here works on counts only (no tasks, no engine), so it is
tested and benchmarked on its own.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar

from consumer.settings import SchedulerSettings, SchedulingPolicy

__all__ = ["OLDEST_SHARE", "JobPicker", "Picker", "SchedulingPolicy", "TenantShares"]

# The one default of the ageing bound is the setting's (SCHEDULER_OLDEST_SHARE); the
# service hands the configured value down, and a picker built without one uses the same.
OLDEST_SHARE: float = SchedulerSettings.model_fields["scheduler_oldest_share"].default

Tenant = str | None  # None: the pseudo-tenant of every tenant-less job
_EPS = 1e-9


class Waiting(Protocol):
    """A job as the picker sees it (hashable by identity)."""

    @property
    def seq(self) -> int: ...  # admission order

    @property
    def pending(self) -> int: ...  # items not yet sent to the engine


W = TypeVar("W", bound=Waiting)
T = TypeVar("T", bound=Hashable)


class JobPicker(Generic[W]):
    """One tenant's waiting jobs: shortest remaining first within the deadlines (module docstring)."""

    def __init__(self, policy: SchedulingPolicy, oldest_share: float) -> None:
        self.fifo = policy is SchedulingPolicy.FIFO or oldest_share >= 1.0
        self.oldest_share = 1.0 if policy is SchedulingPolicy.FIFO else oldest_share
        self.dispatched = 0  # this tenant's dispatches, ever: the clock of the deadlines
        self._deadline: dict[W, float] = {}  # waiting jobs, admission order
        self._by_deadline: list[tuple[float, int, W]] = []  # the same jobs, earliest deadline first

    def __len__(self) -> int:
        return len(self._deadline)

    def __iter__(self) -> Iterator[W]:
        return iter(self._deadline)

    @property
    def waiting_items(self) -> int:
        return sum(job.pending for job in self._deadline)

    def add(self, job: W) -> None:
        backlog = self.waiting_items + job.pending
        deadline = self.dispatched + backlog / self.oldest_share
        self._deadline[job] = deadline
        bisect.insort(self._by_deadline, (deadline, job.seq, job), key=lambda entry: entry[:2])

    def remove(self, job: W) -> None:
        deadline = self._deadline.pop(job, None)
        if deadline is not None:
            self._by_deadline.remove((deadline, job.seq, job))

    def take(self) -> W:
        """The job whose next item goes now (non-empty); call before taking the item off the job."""
        job = next(iter(self._deadline)) if self.fifo else self._shortest_within_deadlines()
        self.dispatched += 1
        if job.pending <= 1:
            self.remove(job)
        return job

    def _shortest_within_deadlines(self) -> W:
        # O(jobs) a dispatch: a tenant has tens of jobs at most, and the
        # picker reads counts only.
        now, ahead = self.dispatched, 0
        best: W | None = None
        for deadline, seq, job in self._by_deadline:
            ahead += job.pending
            if best is None or (job.pending, seq) < (best.pending, best.seq):
                best = job
            if deadline - now - ahead < 1.0:  # no slack: nothing behind it may go first
                break
        assert best is not None
        return best

    def horizons(self) -> dict[W, float]:
        """Fluid model of ``take``: this tenant's dispatches until each job's last item is sent.

        Phases: the shortest eligible job drains until it empties or a job
        before it in deadline order runs out of slack (which then stays at
        zero until it is done), so at most 2 x jobs phases of O(jobs) each.
        """
        jobs = [job for _, _, job in self._by_deadline]
        left = {job: float(job.pending) for job in jobs}
        done: dict[W, float] = {}
        if self.fifo:
            now = 0.0
            for job in self._deadline:
                now += left[job]
                done[job] = now
            return done
        slack_base = {job: self._deadline[job] - self.dispatched for job in jobs}
        now = 0.0
        while jobs:
            ahead, best_at, slacks = 0.0, 0, []
            for i, job in enumerate(jobs):
                ahead += left[job]
                slacks.append(slack_base[job] - now - ahead)
                if (left[job], job.seq) < (left[jobs[best_at]], jobs[best_at].seq):
                    best_at = i
                if slacks[-1] <= _EPS:
                    break
            best = jobs[best_at]
            step = min([left[best], *slacks[:best_at]])
            now += step
            left[best] -= step
            if left[best] <= _EPS:
                done[best] = now
                jobs.remove(best)
        return done


class TenantShares(Generic[T]):
    """Weighted fair queueing between the tenants with items waiting (module docstring)."""

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = dict(weights or {})
        if bad := [name for name, weight in self.weights.items() if not weight > 0]:
            raise ValueError(f"tenant weights must be > 0: {', '.join(bad)}")
        self._tag: dict[T, float] = {}  # waiting tenants -> virtual finish tag, in the order they started waiting
        self._clock = 0.0  # the tag of the last pick: where a tenant starts when none is waiting

    def __len__(self) -> int:
        return len(self._tag)

    def weight(self, tenant: T) -> float:
        return self.weights.get(tenant, 1.0) if isinstance(tenant, str) else 1.0

    def activate(self, tenant: T) -> None:
        if tenant not in self._tag:
            self._tag[tenant] = min(self._tag.values(), default=self._clock)

    def deactivate(self, tenant: T) -> None:
        # Its tag is forgotten: memory stays bounded by the tenants waiting,
        # and at most 1/weight of debt is forgiven.
        self._tag.pop(tenant, None)

    def take(self) -> T:
        """The tenant whose job goes next (non-empty); counts one dispatch for it."""
        tenant = min(self._tag, key=self._tag.__getitem__)  # the first minimal: waiting longest
        self._clock = self._tag[tenant]
        self._tag[tenant] += 1.0 / self.weight(tenant)
        return tenant


class Picker(Generic[W]):
    """Both levels: a tenant by weight, then one of its jobs. Jobs are added once, in admission order."""

    def __init__(
        self,
        policy: SchedulingPolicy,
        oldest_share: float = OLDEST_SHARE,
        *,
        tenant_weights: Mapping[str, float] | None = None,
        by_tenant: bool = True,
    ) -> None:
        if not 0.0 < oldest_share <= 1.0:
            raise ValueError(f"oldest_share must be in (0, 1], not {oldest_share}")
        self.policy = policy
        self.oldest_share = 1.0 if policy is SchedulingPolicy.FIFO else oldest_share
        # fifo is the reference arm: arrival order across tenants too.
        self.by_tenant = by_tenant and policy is not SchedulingPolicy.FIFO
        self.tenants: TenantShares[Tenant] = TenantShares(tenant_weights)
        self._jobs: dict[Tenant, JobPicker[W]] = {}
        self._tenant_of: dict[W, Tenant] = {}

    def __len__(self) -> int:
        """Jobs with items waiting."""
        return len(self._tenant_of)

    def add(self, job: W, tenant: Tenant = None) -> None:
        """A job with items waiting (``pending`` > 0)."""
        key = tenant if self.by_tenant else None
        jobs = self._jobs.get(key)
        if jobs is None:
            jobs = self._jobs[key] = JobPicker(self.policy, self.oldest_share)
        jobs.add(job)
        self._tenant_of[job] = key
        self.tenants.activate(key)

    def remove(self, job: W) -> None:
        """A job released before its items were all sent (no-op if not waiting)."""
        if job not in self._tenant_of:
            return
        key = self._tenant_of.pop(job)
        jobs = self._jobs[key]
        jobs.remove(job)
        if not jobs:
            self._idle(key)

    def take(self) -> W:
        """The job whose next item goes now; call before taking the item off the job."""
        key = self.tenants.take()
        jobs = self._jobs[key]
        job = jobs.take()
        if job.pending <= 1:
            del self._tenant_of[job]
            if not jobs:
                self._idle(key)
        return job

    def _idle(self, key: Tenant) -> None:
        self.tenants.deactivate(key)
        # The tenant's dispatch clock goes with it: deadlines are only compared within one tenant's jobs.
        del self._jobs[key]

    def waiting_by_tenant(self) -> dict[Tenant, int]:
        return {key: jobs.waiting_items for key, jobs in self._jobs.items()}

    def horizons(self) -> dict[W, float]:
        """Fluid model of both levels: all dispatches until each job's last item is sent.

        A job's horizon h in its tenant's dispatches becomes h plus what the
        other waiting tenants take meanwhile: each up to h times its weight
        over this tenant's, or all it has waiting if that is less (water filling).
        """
        waiting = {key: (jobs.waiting_items, self.tenants.weight(key)) for key, jobs in self._jobs.items()}
        out: dict[W, float] = {}
        for key, jobs in self._jobs.items():
            weight = self.tenants.weight(key)
            others = [(items, w / weight) for other, (items, w) in waiting.items() if other != key]
            for job, h in jobs.horizons().items():
                out[job] = h + sum(min(float(items), h * ratio) for items, ratio in others)
        return out
