"""What the gateway knows of each job: its progress events, counts and results.

Built only from the progress topic (plus the jobs this instance has just
produced, ``queued`` until their ``accepted`` arrives), so any instance can
serve any job, and a restarted one rebuilds the same state by re-reading
the topic.

Event ids are the progress records' Kafka offsets: a job's events live in
one partition, in order, so "every event after offset N" means the same on
every instance and after every restart, which is what ``Last-Event-ID``
resume needs.

Delivery upstream is at-least-once, so the store keeps one result per
``item_index``: a ``batch_complete`` re-published after a consumer crash
reaches clients without the results they already have (and not at all when
nothing in it is new), and nothing after the first terminal event is kept.

Memory bound: finished jobs are dropped ``JOB_TTL_SECONDS`` after their last
event; past ``GATEWAY_MAX_JOBS`` jobs or ``GATEWAY_MAX_BYTES`` bytes of
events, a job of the tenant holding the most (jobs, or bytes) is dropped:
its oldest finished one first, then its least recently active running one.
So a school that sends many jobs pushes out its own, never another
school's (jobs without a tenant count as one more tenant). A dropped job is
"not found" afterwards (its results stay in the results topic).

Erased jobs (contract 1.2): ``erase`` drops the job (its streams end) and
remembers its id for ``erased_ttl_s`` (CANCEL_TTL_S, as long as the consumer
refuses to grade the id): events of it read from the progress topic
afterwards (in flight at the erase, or replayed by a restarted gateway) are
ignored, so the job is never re-learnt.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from consumer.contract import (
    TERMINAL_EVENTS,
    AcceptedEvent,
    BatchCompleteEvent,
    CancelledEvent,
    CompleteEvent,
    ItemStatus,
    ItemSummary,
    ProgressEventType,
)
from consumer.tenants import tenant_of

AnyProgressEvent = AcceptedEvent | BatchCompleteEvent | CompleteEvent | CancelledEvent

# Fixed cost of a job, and of an event beyond its JSON text, for the byte bound.
_JOB_OVERHEAD_BYTES = 1024
_EVENT_OVERHEAD_BYTES = 150


class GatewayJobStatus(StrEnum):
    """A job's ``status`` in the HTTP API. Not the contract's ``JobStatus`` (the ``status`` of a
    terminal progress event, what a consumer says of the job): this one is what the gateway
    can say from what it holds, so it has two more: ``queued`` and ``incomplete``."""

    QUEUED = "queued"  # produced by this gateway, not yet accepted by a consumer
    PROCESSING = "processing"
    COMPLETED = "completed"  # finished, and this gateway holds a result of every item
    # Finished, but this gateway holds fewer results than the job's total: it met the job
    # part-way (started or restarted after the job's first events left its replay window,
    # JOB_TTL_SECONDS), or the consumer re-published a finished job's terminal event alone.
    INCOMPLETE = "incomplete"
    CANCELLED = "cancelled"


class EvictReason(StrEnum):
    TTL = "ttl"
    MAX_JOBS = "max_jobs"
    MAX_BYTES = "max_bytes"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    offset: int  # the SSE id
    kind: ProgressEventType
    payload: str  # the JSON sent as SSE data
    timestamp_ms: int  # the record's Kafka timestamp


@dataclass(slots=True)
class ParsedResults:
    """A job's results as parsed for downloads, valid while the job has ``events`` events."""

    events: int
    rows: list[dict[str, object]]
    files: dict[tuple[str, int], object] = field(default_factory=dict)  # (format, missing) -> results.ResultsFile


@dataclass(eq=False)
class JobRecord:
    job_id: str
    state: GatewayJobStatus
    last_activity_s: float
    total_items: int = 0
    request_sha256: str | None = None  # set only on the instance that produced it
    events: list[StoredEvent] = field(default_factory=list)
    # Item indexes already reported. The results themselves are only in the
    # events' JSON (kept once, as sent); results_rows() reads them from there.
    seen: set[int] = field(default_factory=set)
    succeeded: int = 0
    failed: int = 0
    terminal_counts: dict[str, int] = field(default_factory=dict)
    size_bytes: int = _JOB_OVERHEAD_BYTES
    dropped: bool = False
    # The parsed results (and files) of a job downloaded lately (results.RowsCache).
    rows_cache: ParsedResults | None = None
    # Replaced on every change; waiters hold the old one, which is set.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.state in (GatewayJobStatus.COMPLETED, GatewayJobStatus.INCOMPLETE, GatewayJobStatus.CANCELLED)

    @property
    def missing_results(self) -> int:
        """Items of the job whose result this gateway does not hold."""
        return max(0, self.total_items - len(self.seen))

    def notify(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()


class JobStore:
    def __init__(self, *, ttl_s: float, max_jobs: int, max_bytes: int,
                 on_evict: Callable[[EvictReason], None] | None = None,
                 erased_ttl_s: float = 86400.0) -> None:  # fmt: skip
        self._ttl_s = ttl_s
        self._erased_ttl_s = erased_ttl_s
        self._erased: dict[str, float] = {}  # job_id -> unix time of its erase command
        self._max_jobs = max_jobs
        self._max_bytes = max_bytes
        self._on_evict = on_evict
        # Running/queued jobs by last activity; finished jobs by finish time.
        self._active: OrderedDict[str, JobRecord] = OrderedDict()
        self._finished: OrderedDict[str, JobRecord] = OrderedDict()
        self.bytes_kept = 0
        # Per tenant (None: ids without one): jobs and bytes held, for the eviction's choice.
        self._tenant_jobs: Counter[str | None] = Counter()
        self._tenant_bytes: Counter[str | None] = Counter()
        self.closing = False
        self.open_streams = 0
        # Seconds per item seen in recent progress, for the POST's estimate.
        self.seconds_per_item = 0.5

    def __len__(self) -> int:
        return len(self._active) + len(self._finished)

    def get(self, job_id: str) -> JobRecord | None:
        return self._active.get(job_id) or self._finished.get(job_id)

    def active_jobs(self) -> list[JobRecord]:
        """Queued and running jobs."""
        return list(self._active.values())

    def all_jobs(self) -> list[JobRecord]:
        return [*self._active.values(), *self._finished.values()]

    def submitted(self, job_id: str, total_items: int, request_sha256: str, now_s: float) -> JobRecord:
        """A job this instance is about to produce."""
        record = JobRecord(
            job_id, GatewayJobStatus.QUEUED, now_s, total_items=total_items, request_sha256=request_sha256
        )
        self._active[job_id] = record
        self._add(record)
        self._enforce_caps()
        return record

    def forget(self, job_id: str) -> None:
        """A submission whose produce failed."""
        record = self._active.pop(job_id, None)
        if record is not None:
            self._drop(record)

    def erase(self, job_id: str, at_s: float) -> bool:
        """An erase command (unix time ``at_s``): drop the job, ignore its events from now on.
        True when the job was in memory."""
        self._erased[job_id] = max(at_s, self._erased.get(job_id, 0.0))
        record = self._active.pop(job_id, None) or self._finished.pop(job_id, None)
        if record is not None:
            self._drop(record)
        return record is not None

    def is_erased(self, job_id: str) -> bool:
        return job_id in self._erased

    def apply(self, event: AnyProgressEvent, raw: str, *, offset: int, timestamp_ms: int) -> StoredEvent | None:
        """Record one progress event; returns what subscribers get, or None for a repeat (or an erased job)."""
        if event.job_id in self._erased:
            return None
        now_s = timestamp_ms / 1000.0
        record = self.get(event.job_id)
        if record is None:
            record = JobRecord(event.job_id, GatewayJobStatus.PROCESSING, now_s)
            self._active[event.job_id] = record
            self._add(record)
        if record.finished:
            return None  # a reader keeps the first terminal event
        payload = raw
        if isinstance(event, AcceptedEvent):
            record.total_items = event.data.total_items
            record.state = GatewayJobStatus.PROCESSING
        elif isinstance(event, BatchCompleteEvent):
            fresh = [r for r in event.data.results if r.item_index not in record.seen]
            if not fresh and event.data.results:
                return None
            if len(fresh) != len(event.data.results):
                event = event.model_copy(update={"data": event.data.model_copy(update={"results": fresh})})
                payload = event.model_dump_json()
            for result in fresh:
                record.seen.add(result.item_index)
                if result.status is ItemStatus.OK:
                    record.succeeded += 1
                else:
                    record.failed += 1
            self._grow(record, 64 * len(fresh))  # the set entries
            record.total_items = max(record.total_items, event.data.progress.total)
            record.state = GatewayJobStatus.PROCESSING
            if event.data.progress.avg_time_per_item > 0:
                self.seconds_per_item += 0.2 * (event.data.progress.avg_time_per_item - self.seconds_per_item)
        else:
            record.terminal_counts = {
                k: v for k, v in event.data.model_dump().items() if isinstance(v, int) and not isinstance(v, bool)
            }
            record.total_items = max(record.total_items, record.terminal_counts.get("total_processed", 0))
            record.state = _terminal_state(record, event)
        stored = StoredEvent(offset, ProgressEventType(event.event), payload, timestamp_ms)
        record.events.append(stored)
        record.last_activity_s = now_s
        self._grow(record, _EVENT_OVERHEAD_BYTES + len(payload))
        self._touch(record)
        record.notify()
        self._enforce_caps()
        return stored

    def expire(self, now_s: float) -> None:
        """Drop jobs with no event for JOB_TTL_SECONDS (finished or not), and erase marks past their TTL."""
        self._erased = {j: at for j, at in self._erased.items() if at >= now_s - self._erased_ttl_s}
        for jobs in (self._finished, self._active):
            for record in [r for r in jobs.values() if r.last_activity_s < now_s - self._ttl_s]:
                jobs.pop(record.job_id)
                self._drop(record, EvictReason.TTL)

    def close(self) -> None:
        """Shutting down: every open stream ends (clients reconnect elsewhere)."""
        self.closing = True
        for record in [*self._active.values(), *self._finished.values()]:
            record.notify()

    def _touch(self, record: JobRecord) -> None:
        if record.finished:
            self._active.pop(record.job_id, None)
            self._finished[record.job_id] = record
            self._finished.move_to_end(record.job_id)
        else:
            self._active.move_to_end(record.job_id)

    def _add(self, record: JobRecord) -> None:
        tenant = tenant_of(record.job_id)
        self._tenant_jobs[tenant] += 1
        self._tenant_bytes[tenant] += record.size_bytes
        self.bytes_kept += record.size_bytes

    def _grow(self, record: JobRecord, extra_bytes: int) -> None:
        record.size_bytes += extra_bytes
        self._tenant_bytes[tenant_of(record.job_id)] += extra_bytes
        self.bytes_kept += extra_bytes

    def _enforce_caps(self) -> None:
        while len(self) > self._max_jobs:
            self._evict(EvictReason.MAX_JOBS, self._tenant_jobs)
        while self.bytes_kept > self._max_bytes and len(self) > 1:
            self._evict(EvictReason.MAX_BYTES, self._tenant_bytes)

    def _evict(self, reason: EvictReason, held: Counter[str | None]) -> None:
        """Drop the oldest finished job (else the least recently active running one) of the
        tenant that holds the most by ``held``."""
        tenant = max(held, key=lambda t: held[t])
        for jobs in (self._finished, self._active):
            job_id = next((j for j in jobs if tenant_of(j) == tenant), None)
            if job_id is not None:
                self._drop(jobs.pop(job_id), reason)
                return
        jobs = self._finished if self._finished else self._active  # not reached while the counts hold
        self._drop(jobs.popitem(last=False)[1], reason)

    def _drop(self, record: JobRecord, reason: EvictReason | None = None) -> None:
        tenant = tenant_of(record.job_id)
        self._tenant_jobs[tenant] -= 1
        self._tenant_bytes[tenant] -= record.size_bytes
        for counts in (self._tenant_jobs, self._tenant_bytes):
            if counts[tenant] <= 0:
                del counts[tenant]
        self.bytes_kept -= record.size_bytes
        record.dropped = True
        record.rows_cache = None
        record.notify()
        if reason is not None and self._on_evict is not None:
            self._on_evict(reason)


def _terminal_state(record: JobRecord, event: CompleteEvent | CancelledEvent) -> GatewayJobStatus:
    """``completed`` only with a result of every item in hand: never a partial file called complete."""
    if isinstance(event, CancelledEvent):
        return GatewayJobStatus.CANCELLED
    return GatewayJobStatus.COMPLETED if record.missing_results == 0 else GatewayJobStatus.INCOMPLETE


def results_rows(record: JobRecord) -> list[dict[str, object]]:
    """The job's results so far, by item index, as flat rows (CSV/JSONL)."""
    rows: dict[int, dict[str, object]] = {}
    for event in record.events:
        if event.kind is ProgressEventType.BATCH_COMPLETE:
            for result in json.loads(event.payload)["data"]["results"]:
                summary = ItemSummary.model_validate(result).model_dump(mode="json")
                rows.setdefault(summary["item_index"], {"job_id": record.job_id, **summary})
    return [rows[i] for i in sorted(rows)]


def status_body(record: JobRecord) -> dict[str, object]:
    completed = len(record.seen)
    total = record.total_items
    return {
        "job_id": record.job_id,
        "status": record.state.value,
        "total_items": total,
        "completed": completed,
        "succeeded": record.succeeded,
        "failed": record.failed,
        "percentage": round(100.0 * completed / total, 1) if total else 0.0,
        "terminal": record.terminal_counts or None,
        # Results of the job this gateway does not hold (0 for a job it followed from its start;
        # with status "incomplete", the results file lacks them: see docs/http-api.md).
        "missing_results": record.missing_results,
        "stream_url": f"/stream/{record.job_id}",
        "results_url": f"/jobs/{record.job_id}/results",
    }


def is_terminal(kind: ProgressEventType) -> bool:
    return kind in TERMINAL_EVENTS


def dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
