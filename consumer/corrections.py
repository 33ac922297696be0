"""A teacher's correction of one result (contract 1.2, topic ``evaluation.corrections``).

The message, and its validation for the two ways in: a file of corrections
(``texteval correct``) and the body of ``POST /jobs/{job_id}/corrections``.
Both give errors as field paths with the reason and never the value (a
feedback or a comment may quote the student), through
``consumer.validation``. It lives at the ground layer because the tools
(produce, agreement, export) and the gateway (which never imports the
pipeline) read it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
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

from consumer.contract import DEFAULT_MAX_ITEMS, JOB_ID_PATTERN, SCHEMA_VERSION, utc_now
from consumer.validation import safe_errors, validation_problems

# Generous bounds: a teacher's feedback is not held to the model's output
# grammar here (export-training checks that separately); the bounds only keep
# one message small.
FEEDBACK_MAX_CHARS = 2_000
COMMENT_MAX_CHARS = 2_000


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

    def __init__(self, problems: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(problems)
        self.problems = problems
        self.errors = errors


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
    if data.get("corrected_at") in (None, ""):
        data["corrected_at"] = now or utc_now()
    try:
        return Correction.model_validate(data, context={"max_items": max_items})
    except ValidationError as exc:
        errors = [
            {"loc": [*loc, *error["loc"]], "msg": error["msg"], "type": error["type"]} for error in safe_errors(exc)
        ]
        raise InvalidCorrection(validation_problems(exc, root="correction"), errors) from None


def latest_by_item(corrections: list[Correction]) -> dict[str, Correction]:
    """The correction that counts per result: the latest ``corrected_at``
    (a teacher may correct twice; a re-sent correction is the same one)."""
    latest: dict[str, Correction] = {}
    for correction in corrections:
        kept = latest.get(correction.result_id)
        if kept is None or correction.corrected_at >= kept.corrected_at:
            latest[correction.result_id] = correction
    return latest
