"""One job's state record, as written to the job-state topic (one record per job, keyed by ``job_id``).

- running (`JobStatus.PROCESSING`, written "running"): the request's fingerprint and coordinates, the items whose result
  and progress event the broker acknowledged (a bitmap), the ok/failed counts
  and the grading time so far. A new owner grades only the other items.
- completed / cancelled: the fingerprint and the terminal event as it was
  published, kept for ``JOB_ID_RETENTION_S``.

``schema_version`` is checked before anything else is read: a record of a
version this code does not know (a newer consumer's, during a rolling
upgrade) is an ``UnknownSchemaVersion``, which the store counts and skips.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_serializer,
    field_validator,
)

from consumer.contract import CancelledEvent, CompleteEvent, JobStatus

SCHEMA_VERSION = 1


class UnknownSchemaVersion(ValueError):
    """A job-state record of a version this consumer cannot read."""

    def __init__(self, version: object) -> None:
        super().__init__(f"job-state schema_version {version!r} is not {SCHEMA_VERSION}")
        self.version = version


def fingerprint(value: bytes) -> str:
    """Byte-identical requests have the same fingerprint (the request's own bytes, nothing else)."""
    return hashlib.sha256(value).hexdigest()


def _phase_from_wire(value: object) -> object:
    return JobStatus.PROCESSING if value == _RUNNING else value


def _phase_to_wire(status: JobStatus) -> str:
    return _RUNNING if status is JobStatus.PROCESSING else status.value


# A job's status is the contract's JobStatus; on this topic a running job has always been
# written "running", and stays so (records of every consumer version read alike, both ways).
_RUNNING = "running"
Phase = Annotated[JobStatus, BeforeValidator(_phase_from_wire), PlainSerializer(_phase_to_wire, return_type=str)]


@dataclass(frozen=True, slots=True)
class Progress:
    """What a job's runs got acknowledged so far: the part of a job's state a run changes."""

    done: frozenset[int] = frozenset()  # items whose result and progress event are acknowledged
    succeeded: int = 0
    failed: int = 0
    elapsed_s: float = 0.0  # grading time, earlier owners included
    needs_review: int | None = None  # 1.2: ok results flagged for review; None while none carried a distribution

    def acknowledged(self, done: Iterable[int], *, succeeded: int, failed: int, needs_review: int | None) -> Progress:
        """This progress and more items acknowledged: ``succeeded`` and ``failed`` of them, and
        ``needs_review`` of the succeeded flagged (None: none of them carried a distribution)."""
        review = self.needs_review if needs_review is None else (self.needs_review or 0) + needs_review
        return Progress(self.done | frozenset(done), self.succeeded + succeeded, self.failed + failed,
                        self.elapsed_s, review)  # fmt: skip


class JobState(BaseModel):
    schema_version: Literal[1] = 1  # SCHEMA_VERSION
    job_id: str
    fingerprint: str
    partition: int
    offset: int
    total_items: int
    phase: Phase = JobStatus.PROCESSING
    done: set[int] = Field(default_factory=set)  # on the wire: a little-endian bitmap, base64
    succeeded: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    # 1.2, additive: absent on the wire while no result carried a distribution
    # (records of 1.1 consumers, GRADE_DISTRIBUTION=false), so those stay byte-identical.
    needs_review: int | None = Field(default=None, exclude_if=lambda v: v is None)
    updated_at: float = Field(default_factory=time.time)  # unix time of the last write
    terminal: dict[str, Any] | None = None  # the complete/cancelled event as published

    @property
    def finished(self) -> bool:
        return self.phase is not JobStatus.PROCESSING

    @property
    def progress(self) -> Progress:
        return Progress(frozenset(self.done), self.succeeded, self.failed, self.elapsed_s, self.needs_review)

    def with_progress(self, progress: Progress) -> JobState:
        return self.model_copy(
            update={"done": set(progress.done), "succeeded": progress.succeeded, "failed": progress.failed,
                    "elapsed_s": progress.elapsed_s, "needs_review": progress.needs_review},
        )  # fmt: skip

    def finish(self, event: CompleteEvent | CancelledEvent) -> JobState:
        """The finished state: the terminal event says it all, the items are no longer needed."""
        phase = JobStatus.CANCELLED if isinstance(event, CancelledEvent) else JobStatus.COMPLETED
        return self.model_copy(update={"phase": phase, "terminal": event.model_dump(mode="json"), "done": set()})

    @field_serializer("done")
    def _bitmap(self, done: set[int]) -> str:
        bits = sum(1 << i for i in done)
        return base64.b64encode(bits.to_bytes((self.total_items + 7) // 8, "little")).decode()

    @field_validator("done", mode="before")
    @classmethod
    def _from_bitmap(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        bits = int.from_bytes(base64.b64decode(value, validate=True), "little")
        return {i for i in range(info.data["total_items"]) if bits >> i & 1}

    @field_serializer("elapsed_s")
    def _rounded(self, elapsed_s: float) -> float:
        return round(elapsed_s, 3)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, value: bytes) -> JobState:
        """Raises ``UnknownSchemaVersion``, or ``ValueError`` (pydantic's included) for a record that is not one."""
        raw = json.loads(value)
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise UnknownSchemaVersion(version)
        return cls.model_validate(raw)
