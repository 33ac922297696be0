"""The app's one door to job state: what a request gets, and what the runs got acknowledged.

``plan`` decides (``plan.plan``, pure) and then does what the decision
needs: writes the state, counts it. What it decides from is all here: the
job's state, the cancels in force (the control reader hands each on:
``cancel``, ``erase``) and, for a shadow, its sample (``sample_rate``), so a
request's work is decided in one call. ``save`` copies every tracked run's
progress into its state and writes them; the checkpoint calls it before every
offset commit, so an offset is never committed ahead of the state that
explains it.

Which run may write a job's state is a ``Lease``: each plan that writes a
state issues the next number for its job id, and only the run started under
the current number writes. A later request under the same id, or a reload of
the partition after a rebalance, issues a new one (or none): an old run,
still flushing its last sends, can no longer overwrite the newer state.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from consumer.contract import CancelledEvent, CompleteEvent
from consumer.pipeline.jobstate.plan import Action, Plan, plan
from consumer.pipeline.jobstate.record import Progress, fingerprint

if TYPE_CHECKING:
    from consumer.metrics import Metrics
    from consumer.pipeline.intake import Job
    from consumer.pipeline.jobstate.store import JobStateStore

logger = logging.getLogger(__name__)


# jobs_deduplicated's label for each action that grades nothing (the series dashboards read).
class Deduplicated(StrEnum):
    """The `admission` label of texteval_jobs_deduplicated: a request not graded, its job id known."""

    DUPLICATE = "duplicate"
    REPUBLISH = "republish"
    CONFLICT = "conflict"


_DEDUPLICATED = {
    Action.SKIP: Deduplicated.DUPLICATE,
    Action.REPUBLISH: Deduplicated.REPUBLISH,
    Action.CONFLICT: Deduplicated.CONFLICT,
}


class Run(Protocol):
    """What the ledger needs of a job run (``jobs.JobRun``)."""

    @property
    def progress(self) -> Progress: ...

    @property
    def terminal(self) -> CompleteEvent | CancelledEvent | None: ...

    def request_cancel(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Lease:
    job_id: str
    partition: int
    number: int


@dataclass(slots=True)
class _Tracked:
    run: Run
    running: bool = True  # False: aborted (revoke, failed delivery), its sends may still be acknowledged
    cancelled: bool = False  # a cancel reached it (counted once)


class Ledger:
    def __init__(
        self,
        store: JobStateStore,
        metrics: Metrics,
        *,
        sample_rate: float = 1.0,
        expire_every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``sample_rate``: a shadow's share of each job's items (pipeline/shadow.py; 1: all);
        ``clock``: unix time, the time the control commands carry."""
        self._store = store
        self._metrics = metrics
        metrics.expect(metrics.jobs_deduplicated, Deduplicated)
        self._numbers = itertools.count(1)
        self._leases: dict[str, Lease] = {}  # job_id -> the current lease
        self._runs: dict[Lease, _Tracked] = {}  # runs whose progress may still change
        self._cancels: dict[str, float] = {}  # job_id -> unix time until which a cancel is in force
        self._sample_rate = sample_rate
        self._expire_every_s = expire_every_s
        self._clock = clock
        self._next_expiry = clock() + expire_every_s

    def plan(self, job: Job, value: bytes, partition: int, offset: int) -> Plan:
        """What the request read at ``partition``/``offset`` (``value``: its bytes) gets."""
        cancelled = self._cancels.get(job.job_id, 0.0) >= self._clock()
        decided = plan(
            self._store.get(job.job_id), job, fingerprint(value), partition, offset,
            cancelled=cancelled, sample_rate=self._sample_rate,
        )  # fmt: skip
        if decided.state is not None:
            self._store.put(decided.state)
            self._leases[job.job_id] = Lease(job.job_id, partition, next(self._numbers))
        if (label := _DEDUPLICATED.get(decided.action)) is not None:
            self._metrics.jobs_deduplicated.labels(admission=label).inc()
        elif decided.action is Action.CANCELLED:
            self._metrics.jobs_cancelled.inc()
        elif decided.action is Action.RESUME and decided.state is not None:
            self._metrics.items_resumed.inc(len(decided.state.done))
            logger.info("job resumed: job_id=%s acknowledged before=%d", job.job_id, len(decided.state.done))
        return decided

    def started(self, job_id: str, run: Run) -> Lease:
        """A run of the job just planned to grade; returns its lease (for ``ended``)."""
        lease = self._leases[job_id]
        self._runs[lease] = _Tracked(run)
        return lease

    def cancel(self, job_id: str, until_s: float) -> None:
        """A cancel command (control topic), in force until ``until_s`` (unix time): a request
        under the id planned until then is answered ``cancelled``; the job stops if it runs here."""
        self._cancels[job_id] = max(until_s, self._cancels.get(job_id, 0.0))
        lease = self._leases.get(job_id)
        tracked = self._runs.get(lease) if lease is not None else None
        if tracked is None or not tracked.running or tracked.cancelled or tracked.run.terminal is not None:
            return
        tracked.cancelled = True
        tracked.run.request_cancel()
        self._metrics.jobs_cancelled.inc()
        logger.info("job cancelled: job_id=%s", job_id)

    def erase(self, job_id: str, until_s: float) -> None:
        """An erase command (control topic), after its cancel: the job's state is deleted (a
        tombstone, written with the next ``save``) and none is written for it until ``until_s``
        (unix time); its run, if any, may no longer write it (its lease is gone)."""
        self._leases.pop(job_id, None)
        self._store.erase(job_id, until_s)
        logger.info("job state erased: job_id=%s", job_id)

    def ended(self, lease: Lease) -> None:
        """The run's task is over, however it ended (its last progress is taken first)."""
        tracked = self._runs.get(lease)
        if tracked is None:
            return
        self._snapshot(lease, tracked.run)
        tracked.running = False
        terminal = tracked.run.terminal
        if terminal is not None and self._owns(lease) and (state := self._store.get(lease.job_id)) is not None:
            self._store.put(state.finish(terminal))
        if terminal is not None or not self._owns(lease):
            del self._runs[lease]

    def failed(self, lease: Lease) -> None:
        """The run hit a bug and its request went to the DLT: its state goes too, so that
        a re-send (or a replay of the dead letter) is graded afresh, never skipped."""
        self._runs.pop(lease, None)
        if self._owns(lease):
            del self._leases[lease.job_id]
            self._store.delete(lease.job_id)

    def _owns(self, lease: Lease) -> bool:
        return self._leases.get(lease.job_id) == lease

    def _snapshot(self, lease: Lease, run: Run) -> None:
        state = self._store.get(lease.job_id) if self._owns(lease) else None
        if state is None or state.finished:
            return
        progress = run.progress
        if progress.done != state.done:
            self._store.put(state.with_progress(progress))

    async def save(self) -> None:
        """Before an offset commit: every tracked run's acknowledged items, written and acknowledged;
        on a timer, the finished jobs past their retention deleted."""
        for lease, tracked in list(self._runs.items()):
            self._snapshot(lease, tracked.run)
        if (now := self._clock()) >= self._next_expiry:
            self._next_expiry = now + self._expire_every_s
            self._cancels = {job_id: until for job_id, until in self._cancels.items() if until >= now}
            if expired := self._store.expire():
                logger.info("job state: %d finished jobs past their retention deleted", expired)
        await self._store.flush()

    async def load(self, partitions: Iterable[int]) -> None:
        kept = await self._store.load(partitions)
        logger.info("job state loaded: %d jobs", kept)

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked: these partitions' states and leases are another owner's now."""
        gone = set(partitions)
        self._store.forget(gone)
        self._leases = {job_id: lease for job_id, lease in self._leases.items() if lease.partition not in gone}
        self._runs = {lease: t for lease, t in self._runs.items() if t.running or self._owns(lease)}
