"""Kafka record -> a job to grade, or a rejection for the dead-letter topic.

A rejection carries a reason code and a detail naming the field and item
index, never the rejected text itself (it is a minor's personal data; the
dead letter keeps the original bytes for whoever is allowed to read them).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError

from consumer.contract import EvaluationRequest, Item
from consumer.validation import json_error_message, validation_problems


class RejectReason(StrEnum):
    EMPTY_VALUE = "empty_value"  # null or zero-length value
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"  # JSON, but breaks the contract
    UNDECODABLE_RECORD = "undecodable_record"  # the Kafka client could not decode it (codec, corrupt batch)
    JOB_ID_CONFLICT = "job_id_conflict"  # 1.1: another request under a running or finished job_id
    INTERNAL_ERROR = "internal_error"  # 1.2: a bug while running the job (detail: the exception type only)


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    items: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str


def parse_request(value: bytes | None, *, fallback_job_id: str, max_items: int) -> Job | Rejection:
    """``fallback_job_id`` (``topic:partition:offset``) names jobs sent without one."""
    if not value:
        return Rejection(RejectReason.EMPTY_VALUE, "message value is empty")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(RejectReason.INVALID_UTF8, f"value is not UTF-8 (byte {exc.start})")
    try:
        request = EvaluationRequest.model_validate_json(text, context={"max_items": max_items})
    except ValidationError as exc:
        return _rejection(exc)
    return Job(job_id=request.job_id or fallback_job_id, items=tuple(request.items))


def _rejection(exc: ValidationError) -> Rejection:
    if (not_json := json_error_message(exc)) is not None:
        return Rejection(RejectReason.INVALID_JSON, f"value is not JSON: {not_json}")
    return Rejection(RejectReason.INVALID_REQUEST, validation_problems(exc))
