"""The producer's side: submit jobs, and follow them to completion.

Used by ``texteval submit`` and ``texteval demo``. Following reads the
progress and results topics from their current end (taken before the jobs
are produced, so nothing is missed) and keeps one result per ``result_id``,
as every reader of an at-least-once stream should.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError

from consumer.contract import (
    JOB_ID_PATTERN,
    TENANT_PATTERN,
    CancelledData,
    CancelledEvent,
    CompleteData,
    CompleteEvent,
    EvaluationRequest,
    EvaluationResult,
    ProgressEvent,
)
from consumer.kafka import Start, TopicReader, client_kwargs
from consumer.settings import Settings
from consumer.tenants import scoped_job_id
from consumer.tools.files import InputFileError, job_id_for, read_items, read_jsonl, validate_request

if TYPE_CHECKING:
    from consumer.kafka import Record

logger = logging.getLogger(__name__)

_EVENTS: TypeAdapter[ProgressEvent] = TypeAdapter(ProgressEvent)


def read_jobs(path: Path, max_items: int, tenant: str | None = None) -> list[EvaluationRequest]:
    """A JSONL of requests is one job per line; any other file is one job.
    With a ``tenant`` every job id is ``<tenant>/<id>`` (contract 1.2: a
    producer that writes to Kafka itself follows the gateway's convention)."""
    if path.suffix.lower() == ".jsonl":
        lines = list(read_jsonl(path))
        if lines and all(isinstance(value, dict) and "items" in value for _, value in lines):
            jobs = [validate_request(value, max_items, where=f"line {number}") for number, value in lines]
            return [_scoped(job if job.job_id else _with_id(job, path, n), tenant) for n, job in enumerate(jobs)]
    items = read_items(path, max_items)
    return [_scoped(_with_id(EvaluationRequest(items=items), path, 0), tenant)]


def _with_id(job: EvaluationRequest, path: Path, number: int) -> EvaluationRequest:
    # A fresh id per submission: re-submitting a file is a new job, not a
    # duplicate of the old one (result_id derives from job_id). The random
    # part makes it unguessable: nobody can take this job's id first (a
    # squatter's request would win it) or cancel it before it exists.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return job.model_copy(update={"job_id": f"{job_id_for(path)}:{stamp}:{number}:{secrets.token_hex(8)}"})


def _scoped(job: EvaluationRequest, tenant: str | None) -> EvaluationRequest:
    if tenant is None or job.job_id is None:
        return job
    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise InputFileError(f"tenant {tenant!r}: letters, digits and . _ : - only (no '/')")
    job_id = scoped_job_id(tenant, job.job_id)
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise InputFileError(f"job id {job.job_id!r} is too long with the tenant {tenant!r} (128 characters in all)")
    return job.model_copy(update={"job_id": job_id})


@dataclass
class JobProgress:
    total: int
    results: dict[str, EvaluationResult] = field(default_factory=dict)
    complete: CompleteData | None = None
    cancelled: CancelledData | None = None  # 1.1: cancelled jobs end with this instead of complete

    @property
    def done(self) -> bool:
        if self.cancelled is not None:
            return len(self.results) >= self.cancelled.completed
        return self.complete is not None and len(self.results) >= self.total


@dataclass(frozen=True)
class FollowSummary:
    """What ``texteval submit --follow`` says at the end: how many graded, how
    many typed errors, and how many grades a teacher should look at again
    (contract 1.2 ``needs_review``; None when no result says, e.g. the
    consumer runs with the grade distribution off)."""

    ok: int
    failed: int
    to_review: int | None

    @classmethod
    def of(cls, followed: dict[str, JobProgress]) -> FollowSummary:
        results = [r for job in followed.values() for r in job.results.values()]
        failed = sum(1 for r in results if r.error is not None)
        flagged = [r.needs_review for r in results if r.needs_review is not None]
        return cls(ok=len(results) - failed, failed=failed, to_review=sum(flagged) if flagged else None)

    def __str__(self) -> str:
        line = f"{self.ok + self.failed} results: {self.ok} ok, {self.failed} typed errors"
        if self.to_review is not None:
            return f"{line}; {self.to_review} to review (low confidence)"
        return f"{line}; no confidence reported" if self.ok else line


OnResult = Callable[[EvaluationResult], None]
OnEvent = Callable[[ProgressEvent], None]


async def submit(settings: Settings, jobs: list[EvaluationRequest]) -> None:
    """Produce the jobs (keyed by ``job_id``) and wait for the broker's acknowledgements."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        **client_kwargs(settings), max_request_size=settings.kafka.max_message_bytes, acks="all"
    )
    await producer.start()
    try:
        for job in jobs:
            if job.job_id is None:
                raise ValueError("every submitted job needs a job_id (read_jobs gives one)")
            value = job.model_dump_json(exclude_none=True).encode()
            await producer.send_and_wait(settings.kafka.requests_topic, value=value, key=job.job_id.encode())
    finally:
        await producer.stop()


async def submit_and_follow(
    settings: Settings,
    jobs: list[EvaluationRequest],
    *,
    on_result: OnResult | None = None,
    on_event: OnEvent | None = None,
    timeout_s: float = 3600.0,
) -> dict[str, JobProgress]:
    """Submit, then read results and progress until every job is complete with all its results."""
    reader = TopicReader(
        client_kwargs(settings),
        [settings.kafka.progress_topic, settings.kafka.results_topic],
        start=Start.END,  # opened before producing: nothing of these jobs is missed
        max_message_bytes=settings.kafka.max_message_bytes,
    )
    async with reader:
        await submit(settings, jobs)
        progress = {job.job_id: JobProgress(total=len(job.items)) for job in jobs if job.job_id}
        follower = _Follower(settings.kafka.results_topic, progress, on_result, on_event)
        await reader.until(lambda: all(job.done for job in progress.values()), follower.on_record, timeout_s=timeout_s)
    return progress


@dataclass
class _Follower:
    results_topic: str
    progress: dict[str, JobProgress]
    on_result: OnResult | None
    on_event: OnEvent | None

    def on_record(self, record: Record) -> None:
        try:
            data = json.loads(record.value) if record.value is not None else None
        except ValueError:
            return  # not a message of ours
        job_id = data.get("job_id") if isinstance(data, dict) else None
        job = self.progress.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            return  # someone else's job
        try:
            if record.topic == self.results_topic:
                self._result(job, EvaluationResult.model_validate(data))
            else:
                self._event(job, _EVENTS.validate_python(data))
        except ValidationError as exc:
            # E.g. an event type newer than this client: skip it, say which.
            logger.warning("unreadable message on %s at offset %d: %d errors", record.topic, record.offset,
                           exc.error_count())  # fmt: skip

    def _result(self, job: JobProgress, result: EvaluationResult) -> None:
        if result.result_id not in job.results:
            job.results[result.result_id] = result
            if self.on_result is not None:
                self.on_result(result)

    def _event(self, job: JobProgress, event: ProgressEvent) -> None:
        if isinstance(event, CompleteEvent):
            job.complete = event.data
        elif isinstance(event, CancelledEvent):
            job.cancelled = event.data
        if self.on_event is not None:
            self.on_event(event)
