"""A teacher's correction of one result (contract 1.2, topic ``evaluation.corrections``), and its rules.

The message, and its validation for the two ways in: a file of corrections
(``texteval correct``) and the body of ``POST /jobs/{job_id}/corrections``.
Both give errors as field paths with the reason and never the value (a
feedback or a comment may quote the student), through
``consumer.validation``. It lives at the ground layer because the tools
(produce, agreement, export) and the gateway (which never imports the
pipeline) read it the same way.

The rules of contract 1.3, here once for every writer and reader:

- ``corrected_at`` may not lie more than ``CLOCK_SKEW`` (a minute) after the
  moment the correction is written: ``texteval correct`` dead-letters such a
  line, the gateway answers 422, and a reader of the topic ignores one that
  a producer wrote directly (judged against the record's own timestamp,
  not the reading time: it was invalid when it was written).
- The correction that counts for an item is the one applied last (topic or
  file order), not the one with the latest ``corrected_at``: a teacher's
  clock or a re-sent sheet cannot reorder what was decided.
- Every correction applied leaves a decision record (``correction_record``):
  its grade, the grade before it where the writer knows it, and who, never
  the feedback or the comment.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from consumer.contract import DEFAULT_MAX_ITEMS, JOB_ID_PATTERN, SCHEMA_VERSION, CorrectionRecord, utc_now
from consumer.tenants import tenant_of
from consumer.validation import safe_errors, validation_problems

# Generous bounds: a teacher's feedback is not held to the model's output
# grammar here (export-training checks that separately); the bounds only keep
# one message small.
FEEDBACK_MAX_CHARS = 2_000
COMMENT_MAX_CHARS = 2_000
# Contract 1.3: how far in the future a corrected_at may lie (clocks disagree a little).
CLOCK_SKEW = timedelta(minutes=1)
FUTURE_MESSAGE = "lies more than a minute in the future"


def _not_bool(value: object) -> object:
    # JSON true is not the integer 1, though Python's True == 1 lets it pass Literal[1].
    if isinstance(value, bool):
        raise ValueError("must be the integer 1, not a boolean")
    return value


def _not_blank(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty or whitespace (leave the field out instead)")
    return value


_Text = Annotated[StrictStr, BeforeValidator(_not_blank)]


class Correction(BaseModel):
    """One corrected grade. ``feedback`` absent: the teacher corrected the grade alone."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Annotated[Literal[1], BeforeValidator(_not_bool)] = SCHEMA_VERSION
    job_id: Annotated[StrictStr, Field(pattern=JOB_ID_PATTERN)]
    item_index: Annotated[StrictInt, Field(ge=0)]
    nota: Annotated[StrictInt, Field(ge=0, le=5)]
    feedback: Annotated[_Text, Field(min_length=1, max_length=FEEDBACK_MAX_CHARS)] | None = None
    comment: Annotated[_Text, Field(min_length=1, max_length=COMMENT_MAX_CHARS)] | None = None
    corrected_at: AwareDatetime

    @field_validator("item_index")
    @classmethod
    def _within_a_job(cls, index: int, info: ValidationInfo) -> int:
        # MAX_ITEMS_PER_JOB is a setting (as for requests, it arrives through
        # the validation context): a larger index names no result.
        max_items = int((info.context or {}).get("max_items", DEFAULT_MAX_ITEMS))
        if index >= max_items:
            raise ValueError(f"beyond the largest job ({max_items} items)")
        return index

    @property
    def result_id(self) -> str:
        return f"{self.job_id}#{self.item_index}"


class InvalidCorrection(ValueError):
    """A correction that breaks the contract. ``problems`` is safe to show
    anywhere; ``errors`` are FastAPI-shaped (``loc``, ``msg``, ``type``)."""

    def __init__(self, problems: str, errors: list[dict[str, Any]], *, in_future: bool = False) -> None:
        super().__init__(problems)
        self.problems = problems
        self.errors = errors
        self.in_future = in_future  # valid but for a corrected_at in the future (contract 1.3)


def parse_correction(
    value: object,
    *,
    job_id: str | None = None,
    now: datetime | None = None,
    max_items: int = DEFAULT_MAX_ITEMS,
    loc: tuple[str | int, ...] = (),
) -> Correction:
    """Validate one correction as read from a file line or a POST body entry.

    ``job_id`` (the gateway's path) fills the field, and an entry that names
    another job is refused (a tenant must not write to a job it cannot see
    through the body). ``corrected_at`` defaults to ``now``: a file or a
    form written by hand rarely carries one. ``loc`` prefixes the error paths.
    A ``corrected_at`` more than a minute after ``now`` (the moment of writing;
    for a record read from the topic, its timestamp) is refused (contract 1.3).
    """
    if not isinstance(value, Mapping):
        error = {"loc": list(loc), "msg": "a correction is a JSON object", "type": "model_type"}
        raise InvalidCorrection(f"{'.'.join(map(str, loc)) or 'correction'}: {error['msg']}", [error])
    data = dict(value)
    if job_id is not None:
        if "job_id" in data and data["job_id"] != job_id:
            error = {"loc": [*loc, "job_id"], "msg": "must be absent or the job in the path", "type": "value_error"}
            raise InvalidCorrection(f"{'.'.join(map(str, error['loc']))}: {error['msg']}", [error])
        data["job_id"] = job_id
    now = now or utc_now()
    if data.get("corrected_at") in (None, ""):
        data["corrected_at"] = now
    try:
        correction = Correction.model_validate(data, context={"max_items": max_items})
    except ValidationError as exc:
        errors = [
            {"loc": [*loc, *error["loc"]], "msg": error["msg"], "type": error["type"]} for error in safe_errors(exc)
        ]
        raise InvalidCorrection(validation_problems(exc, root="correction"), errors) from None
    if in_the_future(correction, now):
        # The value is not shown (as for every field): the path and the rule say enough.
        error = {"loc": [*loc, "corrected_at"], "msg": FUTURE_MESSAGE, "type": "value_error"}
        raise InvalidCorrection(f"corrected_at: {FUTURE_MESSAGE}", [error], in_future=True)
    return correction


def in_the_future(correction: Correction, now: datetime) -> bool:
    """Contract 1.3: ``corrected_at`` more than ``CLOCK_SKEW`` after ``now`` (when it was written)."""
    return correction.corrected_at > now + CLOCK_SKEW


def latest_by_item(corrections: Iterable[Correction]) -> dict[str, Correction]:
    """The correction that counts per result: the one applied last, i.e. the last
    in the order given (a job's corrections share one partition, so topic order is
    the order they were applied; in a file, line order). Not the latest
    ``corrected_at`` (contract 1.3): a teacher who corrects again wins even if a
    clock said otherwise."""
    return {correction.result_id: correction for correction in corrections}


def correction_by(*, tenant: str | None, key_id: str | None, admin: bool = False) -> str:
    """A decision record's ``by``: who applied it, named without the key.

    ``key_id`` is a short prefix of the key's SHA-256 (``consumer.gateway.auth``):
    it tells two keys of one school apart and cannot be turned back into a key.
    """
    if admin:
        return f"admin:{key_id}" if key_id else "admin"
    if tenant is None:
        return "anonymous"
    return f"{tenant}:{key_id}" if key_id else tenant


def correction_record(
    correction: Correction, *, previous_nota: int | None, by: str, applied_at: datetime | None = None
) -> CorrectionRecord:
    """The decision record of a correction applied (contract 1.3): no feedback, no comment."""
    return CorrectionRecord(
        result_id=correction.result_id,
        job_id=correction.job_id,
        tenant=tenant_of(correction.job_id),
        item_index=correction.item_index,
        nota=correction.nota,
        previous_nota=previous_nota,
        by=by,
        corrected_at=correction.corrected_at,
        applied_at=applied_at or utc_now(),
    )


@dataclass(frozen=True, slots=True)
class ErasedSkipped:
    """What a reader of corrections left out for erased jobs (``checked`` False: it did not look)."""

    jobs: int = 0
    items: int = 0
    checked: bool = True

    def as_dict(self) -> dict[str, object]:
        return {"checked": self.checked, "jobs": self.jobs, "items": self.items}

    def __str__(self) -> str:
        if not self.checked:
            return "erased jobs not checked"
        return f"erased jobs skipped: {self.jobs} ({self.items} corrected items)"


def without_erased(
    corrections: Mapping[str, Correction], erased: Collection[str]
) -> tuple[dict[str, Correction], int, int]:
    """Contract 1.3: everything that reads corrections skips an erased job.

    ``corrections``: result_id -> the correction that counts; returns the ones
    of jobs not erased, and how many jobs and items were skipped.
    """
    kept = {rid: c for rid, c in corrections.items() if c.job_id not in erased}
    skipped_jobs = {c.job_id for c in corrections.values() if c.job_id in erased}
    return kept, len(skipped_jobs), len(corrections) - len(kept)
