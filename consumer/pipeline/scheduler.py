"""The scheduler between admitted jobs and the engine: one per process.

    JobRun --submit(items)--> Scheduler --grade(item), at most `depth` at once--> engine
           <--deliver(index, outcome)--

Once a request sits in vLLM's queue it cannot be moved (vLLM serves its
queue first come, first served; ``priority`` is strict, not fair), so
fairness has to live here, in front of a short engine queue. The scheduler
keeps ``depth`` items in the engine (a little more than ``MAX_NUM_SEQS``:
short, so a new small job gets the next free slots, but never empty, so the
engine never waits for us) and each time a slot frees asks the ``Picker``
which job goes next: a tenant by weight (a job's tenant is
``consumer.tenants.tenant_of(job_id)``), then one of its jobs (see
``policy.py``, with the bound that no job starves).

Per-item work before the engine (prompt building, tokenizing: the first
step of ``engine.grade``) happens as an item is fed, a few thousand
characters per turn of the event loop, never for a whole job up front: the loop stays responsive
(``/health``, heartbeats, acks) while a 16 MB job is fed.

``release(ticket)`` (a job cancelled, or aborted: revoke, shutdown, failure;
its ``JobRun`` releases it) drops the job's waiting items in O(1) and aborts
its items in the engine (at most ``depth``); nothing of it is delivered afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from consumer.contract import ErrorCode, Item
from consumer.engine.base import GradeOutcome, GradingEngine
from consumer.metrics import Metrics, TenantLabel
from consumer.pipeline.policy import OLDEST_SHARE, Picker, SchedulingPolicy
from consumer.tenants import tenant_of

# Called once per item that comes back from the engine (never after a release).
Deliver = Callable[[int, GradeOutcome], None]

# Characters of student text fed per turn of the event loop. Tokenizing runs
# at roughly 0.3 us per character (a 2000 x 7,000-character job took 4.2 s),
# so a turn blocks the loop for a few milliseconds at most: two or three long
# texts, or dozens of short ones (feeding one item per turn would cost a
# loop turn per item for nothing).
CHARS_PER_TURN = 16_000

# Tenants with a series of their own in texteval_scheduler_tenant_items_waiting
# (those with the most items waiting); the rest are summed into `_other`, so
# the metric's cardinality is bounded whatever the number of schools.
TENANT_SERIES = 10
# The per-tenant gauge is refreshed when jobs come and go, and every this
# many dispatches in between (sorting the tenants on every item would cost
# more than the picking itself).
TENANT_GAUGE_EVERY = 64


class EngineMeter:
    """The engine's throughput (items per busy second) and item latency, recent.

    Throughput counts only time with work in the engine, over the last
    ``window`` completions, so idle minutes between jobs do not make the
    engine look slow.
    """

    def __init__(self, initial_items_per_s: float = 2.0, window: int = 512, smoothing: float = 0.05) -> None:
        self._initial = initial_items_per_s
        self._gaps: deque[float] = deque(maxlen=window)
        self._gap_sum = 0.0
        self._last_completion = 0.0
        self._busy_since = 0.0
        self._alpha = smoothing
        self.item_latency_s = 0.0

    def busy(self, now: float) -> None:
        """The engine went from idle to working."""
        self._busy_since = now

    def record(self, now: float, latency_s: float) -> None:
        if self._last_completion or self._busy_since:
            if len(self._gaps) == self._gaps.maxlen:
                self._gap_sum -= self._gaps[0]
            gap = max(0.0, now - max(self._last_completion, self._busy_since))
            self._gaps.append(gap)
            self._gap_sum += gap
        self._last_completion = now
        if self.item_latency_s == 0.0:
            self.item_latency_s = latency_s
        else:
            self.item_latency_s += self._alpha * (latency_s - self.item_latency_s)

    @property
    def items_per_s(self) -> float:
        if len(self._gaps) < 8 or self._gap_sum <= 0.0:
            return self._initial
        return len(self._gaps) / self._gap_sum


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted job inside the scheduler (identity-hashed)."""

    job_id: str
    seq: int
    items: Sequence[Item]
    deliver: Deliver
    queue: deque[int]  # item indices not yet sent to the engine
    running: dict[asyncio.Task[GradeOutcome], int] = field(default_factory=dict)  # task -> item index
    released: bool = False

    @property
    def pending(self) -> int:
        return len(self.queue)


class Scheduler:
    def __init__(
        self,
        engine: GradingEngine,
        metrics: Metrics,
        *,
        policy: SchedulingPolicy = SchedulingPolicy.FAIR,
        depth: int | None = 320,
        oldest_share: float = OLDEST_SHARE,
        meter: EngineMeter | None = None,
        tenant_weights: Mapping[str, float] | None = None,
        by_tenant: bool = True,
    ) -> None:
        """``depth``: items in the engine at most; ``None`` = no bound (everything in flight).

        ``tenant_weights``: shares between tenants (unlisted: 1); ``by_tenant=False``: every job in one pool.
        """
        self._engine = engine
        self._metrics = metrics
        # Holds the jobs with items waiting, by tenant, in admission order.
        self._picker: Picker[Ticket] = Picker(policy, oldest_share, tenant_weights=tenant_weights, by_tenant=by_tenant)
        self.depth = depth
        self.meter = meter or EngineMeter()
        self._seq = 0
        self._waiting_items = 0
        self._in_engine = 0
        self._feeder: asyncio.Task[None] | None = None
        self._dispatched = 0  # items sent to the engine, ever
        # The fluid model's horizons, computed when the set of jobs changes;
        # in between, every dispatch brings each job one dispatch closer.
        self._horizons: dict[Ticket, float] | None = None
        self._horizons_at = 0
        self._tenant_series: set[str] = set()  # label values of the per-tenant gauge set now

    @property
    def policy(self) -> SchedulingPolicy:
        return self._picker.policy

    @property
    def waiting(self) -> int:
        """Items admitted and not yet sent to the engine."""
        return self._waiting_items

    @property
    def in_engine(self) -> int:
        """Items sent to the engine, not finished."""
        return self._in_engine

    # --- jobs in and out -------------------------------------------------

    def submit(
        self, job_id: str, items: Sequence[Item], deliver: Deliver, indices: Iterable[int] | None = None
    ) -> Ticket:
        """Queue a job's items (all, or ``indices``); grading starts as slots free."""
        self._seq += 1
        queue = deque(range(len(items)) if indices is None else indices)
        ticket = Ticket(job_id, self._seq, items, deliver, queue)
        if queue:
            self._picker.add(ticket, tenant_of(job_id))
            self._waiting_items += len(queue)
        self._horizons = None
        self._update_gauges()
        self._update_tenant_gauges()
        self._kick()
        return ticket

    def release(self, ticket: Ticket) -> int:
        """Forget a job: drop its waiting items, abort those in the engine. Returns the items dropped."""
        if ticket.released:
            return 0
        ticket.released = True
        dropped = ticket.pending
        self._picker.remove(ticket)
        ticket.queue = deque()  # O(1) for the scheduler; the old deque is freed by the runtime
        self._waiting_items -= dropped
        self._horizons = None
        for task in ticket.running:  # at most `depth`
            task.cancel()  # cancelling grade() aborts the generation
        self._update_gauges()
        self._update_tenant_gauges()
        return dropped

    # --- estimates ---------------------------------------------------------

    def estimate_s(self, ticket: Ticket) -> float:
        """Seconds until the job's last item is back, given the jobs sharing the engine now.

        The policy's fluid model says how many dispatches (of every tenant)
        happen before the job's last item leaves; the engine's recent throughput turns that
        into time, and one item's recent latency covers its stay in the engine.
        """
        if ticket.released or (not ticket.queue and not ticket.running):
            return 0.0
        horizon = 0.0
        if ticket.queue:
            if self._horizons is None:
                self._horizons, self._horizons_at = self._picker.horizons(), self._dispatched
            since = self._dispatched - self._horizons_at
            horizon = max(float(ticket.pending), self._horizons.get(ticket, 0.0) - since)
        rate = max(self.meter.items_per_s, 1e-6)
        latency = self.meter.item_latency_s or (1.0 / rate)
        return horizon / rate + latency

    # --- feeding the engine ------------------------------------------------

    def _has_slot(self) -> bool:
        return self.depth is None or self._in_engine < self.depth

    def _kick(self) -> None:
        if self._picker and self._has_slot() and (self._feeder is None or self._feeder.done()):
            self._feeder = asyncio.create_task(self._feed())

    async def _feed(self) -> None:
        while self._picker and self._has_slot():
            budget = CHARS_PER_TURN
            while budget > 0 and self._picker and self._has_slot():
                budget -= self._launch(self._picker.take())
            # The items just launched build and tokenize their prompts in
            # their tasks' first step, on the next turn; network I/O, timers
            # and /health run between two such turns, not after a whole job.
            await asyncio.sleep(0)

    def _launch(self, ticket: Ticket) -> int:
        """Send the job's next item to the engine (the picker has counted it); returns its text's length."""
        index = ticket.queue.popleft()
        self._waiting_items -= 1
        self._dispatched += 1
        if self._in_engine == 0:
            self.meter.busy(time.monotonic())
        self._in_engine += 1
        self._metrics.engine_in_flight.inc()
        if not ticket.queue or self._dispatched % TENANT_GAUGE_EVERY == 0:
            self._update_tenant_gauges()
        item = ticket.items[index]
        task = asyncio.create_task(self._engine.grade(item, request_id=f"{ticket.job_id}#{index}"))
        ticket.running[task] = index
        task.add_done_callback(lambda done: self._finished(ticket, done))
        self._update_gauges()
        return len(item.respuesta) + len(item.consigna) + 1

    def _finished(self, ticket: Ticket, task: asyncio.Task[GradeOutcome]) -> None:
        index = ticket.running.pop(task)
        self._in_engine -= 1
        self._metrics.engine_in_flight.dec()
        self._update_gauges()
        # Refill first, deliver after: the feeder's turn (and the items it
        # launches) comes before the job runs publish the results that just
        # came back, so the engine is not left idle while they do.
        self._kick()
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            outcome = task.result()
        else:
            # The engine's contract is never to raise for an item; if it
            # does anyway, the item gets an error result, not a hang.
            message = f"{type(error).__name__}: {str(error)[:200]}"
            outcome = GradeOutcome.failed(ErrorCode.ENGINE_ERROR, message, prompt_sha256="", latency_ms=0.0)
        self.meter.record(time.monotonic(), outcome.latency_ms / 1000.0)
        asyncio.get_running_loop().call_soon(self._deliver, ticket, index, outcome)

    @staticmethod
    def _deliver(ticket: Ticket, index: int, outcome: GradeOutcome) -> None:
        if not ticket.released:  # released meanwhile: nothing of it is delivered
            ticket.deliver(index, outcome)

    def _update_gauges(self) -> None:
        self._metrics.scheduler_items_waiting.set(self._waiting_items)
        self._metrics.engine_queue_depth.set(self._in_engine)

    def _update_tenant_gauges(self) -> None:
        """Items waiting by tenant: the TENANT_SERIES largest, the rest in ``_other`` (bounded cardinality)."""
        ranked = sorted(self._picker.waiting_by_tenant().items(), key=lambda entry: -entry[1])
        values = {TenantLabel.NONE if tenant is None else tenant: items for tenant, items in ranked[:TENANT_SERIES]}
        values[TenantLabel.OTHER] = sum(items for _, items in ranked[TENANT_SERIES:])
        gauge = self._metrics.scheduler_tenant_items_waiting
        for gone in self._tenant_series - values.keys():
            gauge.remove(gone)
        for label, items in values.items():
            gauge.labels(tenant=label).set(items)
        self._tenant_series = set(values)
