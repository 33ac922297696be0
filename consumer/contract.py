"""The message contract (../shared/contract.md, version 1 with the 1.1, 1.2 and 1.3 additions) as pydantic models.

``schemas/`` is generated from these models (``texteval schemas``) and a test
fails when the two drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

SCHEMA_VERSION: Literal[1] = 1
DEFAULT_MAX_ITEMS = 2000
JOB_ID_PATTERN = r"^[A-Za-z0-9._:/-]{1,128}$"
# A tenant is a job id's first /-segment (consumer/tenants.py): the same characters, no "/".
TENANT_PATTERN = r"^[A-Za-z0-9._:-]{1,127}$"


def _not_blank(value: str) -> str:
    # Checked on the trimmed text, but the value is kept as given: the prompt
    # must carry the student's text exactly (only NFC-normalised).
    if not value.strip():
        raise ValueError("must not be empty or whitespace")
    return value


def _not_bool(value: object) -> object:
    # JSON true is not the integer 1, though Python's True == 1 lets it pass Literal[1].
    if isinstance(value, bool):
        raise ValueError("must be the integer 1, not a boolean")
    return value


def _text(max_chars: int) -> object:
    return Annotated[StrictStr, Field(min_length=1, max_length=max_chars), AfterValidator(_not_blank)]


class Item(BaseModel):
    """One student answer. Unknown extra fields are ignored (forward compatible)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id_alumno: _text(128)  # type: ignore[valid-type]
    curso: _text(1_000)  # type: ignore[valid-type]
    consigna: _text(1_000)  # type: ignore[valid-type]
    respuesta: _text(20_000)  # type: ignore[valid-type]


class EvaluationRequest(BaseModel):
    """One job. ``job_id`` may be absent: the consumer then derives one."""

    model_config = ConfigDict(extra="ignore")

    schema_version: Annotated[Literal[1], BeforeValidator(_not_bool)] = SCHEMA_VERSION
    job_id: Annotated[StrictStr, Field(pattern=JOB_ID_PATTERN)] | None = None
    items: Annotated[list[Item], Field(min_length=1, json_schema_extra={"maxItems": DEFAULT_MAX_ITEMS})]

    @field_validator("items", mode="before")
    @classmethod
    def _cap_items(cls, items: object, info: ValidationInfo) -> object:
        # MAX_ITEMS_PER_JOB is a setting, so the cap arrives through the
        # validation context instead of being fixed in the type. It runs
        # before the items are validated: a 3 MB message of a million empty
        # objects must not cost a million validations and four million errors.
        context = info.context or {}
        max_items = int(context.get("max_items", DEFAULT_MAX_ITEMS))
        if isinstance(items, list) and len(items) > max_items:
            raise ValueError(f"{len(items)} items, more than the maximum {max_items}")
        return items


class ItemStatus(StrEnum):
    OK = "ok"
    ERROR = "error"


class ErrorCode(StrEnum):
    INPUT_TOO_LONG = "input_too_long"  # prompt + max_tokens exceed MAX_MODEL_LEN
    INVALID_OUTPUT = "invalid_output"  # cut off, not JSON, or grade out of range
    ENGINE_ERROR = "engine_error"  # the engine raised for this item
    ENGINE_TIMEOUT = "engine_timeout"  # no output within ENGINE_TIMEOUT_S


class ErrorInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    message: str


class Sampling(BaseModel):
    model_config = ConfigDict(frozen=True)

    temperature: float
    top_p: float
    max_tokens: int
    seed: int


# The status rule, for readers that validate with the JSON Schema only.
_RESULT_STATUS_RULE: JsonDict = {
    "allOf": [
        {
            "if": {"properties": {"status": {"const": "ok"}}},
            "then": {
                "properties": {
                    "nota": {"type": "integer"},
                    "feedback": {"type": "string"},
                    "error": {"type": "null"},
                }
            },
            "else": {
                "properties": {
                    "nota": {"type": "null"},
                    "feedback": {"type": "null"},
                    "error": {"type": "object"},
                    # 1.2: an error result has no grade distribution.
                    "nota_probabilities": False,
                    "confidence": False,
                    "needs_review": False,
                    "review_reasons": False,  # 1.3
                }
            },
        }
    ]
}


class ReviewReason(StrEnum):
    """1.3: why a teacher should look at a grade. Listed here in the order a result lists them."""

    LOW_CONFIDENCE = "low_confidence"  # confidence < REVIEW_CONFIDENCE
    NEAR_TIE = "near_tie"  # the two most probable grades within TIE_MARGIN of each other
    SUSPECTED_INJECTION = "suspected_injection"  # the answer addresses the grader; graded without those spans
    REPETITION = "repetition"  # padded by repeating itself
    KEYWORD_STUFFING = "keyword_stuffing"  # a list of terms, not an answer
    NO_ANSWER = "no_answer"  # empty once punctuation is removed, "no ho sé" and the like
    COPIES_PROMPT = "copies_prompt"  # repeats the consigna
    OTHER_LANGUAGE = "other_language"  # not Catalan
    GIBBERISH = "gibberish"  # not words


REVIEW_REASON_ORDER: tuple[ReviewReason, ...] = tuple(ReviewReason)


def ordered_reasons(reasons: Iterable[ReviewReason | str]) -> list[ReviewReason]:
    """The contract's order, each reason once: the list is stable whoever builds it."""
    given = {ReviewReason(r) for r in reasons}
    return [r for r in REVIEW_REASON_ORDER if r in given]


# 1.2 "Grade confidence": the model's distribution over the grades 0..5.
Probability = Annotated[float, Field(ge=0, le=1)]
GradeProbabilities = Annotated[list[Probability], Field(min_length=6, max_length=6)]
_PROBABILITY_SUM_TOLERANCE = 1e-3
_ARGMAX_TOLERANCE = 1e-6  # rounding to PROBABILITY_DECIMALS may make a tie of a near-tie


def _check_distribution(
    status: ItemStatus,
    nota: int | None,
    probabilities: list[float] | None,
    confidence: float | None,
    needs_review: bool | None,
    review_reasons: list[ReviewReason] | None = None,
) -> None:
    """The three 1.2 fields come together, on ok results only, and agree with each other;
    1.3's reasons agree with ``needs_review``, and the grade is the most probable one."""
    if review_reasons is not None:
        if status is not ItemStatus.OK:
            raise ValueError("review_reasons are for ok results only")
        if review_reasons != ordered_reasons(review_reasons):
            raise ValueError("review_reasons must be in the contract's order, each once")
        if needs_review is not None and needs_review != bool(review_reasons):
            raise ValueError("needs_review must be true exactly when review_reasons is not empty")
        if (
            nota is not None
            and probabilities is not None
            and probabilities[nota] < max(probabilities) - _ARGMAX_TOLERANCE
        ):
            raise ValueError("nota must be the most probable grade of nota_probabilities")
    fields = (probabilities, confidence, needs_review)
    if all(f is None for f in fields):
        return
    if status is not ItemStatus.OK:
        raise ValueError("nota_probabilities, confidence and needs_review are for ok results only")
    if probabilities is None or confidence is None or needs_review is None:
        raise ValueError("nota_probabilities, confidence and needs_review come together")
    if abs(sum(probabilities) - 1.0) > _PROBABILITY_SUM_TOLERANCE:
        raise ValueError("nota_probabilities must sum to 1")
    if nota is not None and abs(probabilities[nota] - confidence) > _PROBABILITY_SUM_TOLERANCE:
        raise ValueError("confidence must be the probability of the nota given")


class EvaluationResult(BaseModel):
    """One graded text; ``result_id`` is the idempotency key."""

    model_config = ConfigDict(json_schema_extra=_RESULT_STATUS_RULE)

    schema_version: Literal[1] = SCHEMA_VERSION
    result_id: str
    job_id: str
    item_index: Annotated[int, Field(ge=0)]
    id_alumno: str
    status: ItemStatus
    nota: Annotated[int, Field(ge=0, le=5)] | None
    feedback: str | None
    error: ErrorInfo | None
    model: str
    prompt_sha256: str
    sampling: Sampling
    latency_ms: Annotated[float, Field(ge=0)]
    produced_at: datetime
    # 1.2, ok results (absent, not null, otherwise: 1.0 readers see the message they know).
    nota_probabilities: GradeProbabilities | None = Field(default=None, exclude_if=lambda v: v is None)
    confidence: Probability | None = Field(default=None, exclude_if=lambda v: v is None)
    needs_review: bool | None = Field(default=None, exclude_if=lambda v: v is None)
    # 1.3, ok results: why a teacher should look (empty: no reason); absent on error results.
    review_reasons: list[ReviewReason] | None = Field(default=None, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _status_matches_fields(self) -> EvaluationResult:
        if self.status is ItemStatus.OK:
            if self.nota is None or self.feedback is None or self.error is not None:
                raise ValueError("status ok needs nota and feedback and no error")
        elif self.nota is not None or self.feedback is not None or self.error is None:
            raise ValueError("status error needs an error and no nota or feedback")
        _check_distribution(
            self.status, self.nota, self.nota_probabilities, self.confidence, self.needs_review, self.review_reasons
        )
        return self


def result_id(job_id: str, item_index: int) -> str:
    return f"{job_id}#{item_index}"


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- progress events (the ``data`` parts keep the prototype's shapes) ---


class JobStatus(StrEnum):
    PROCESSING = "processing"
    COMPLETED = "completed"
    CANCELLED = "cancelled"  # 1.1


class ProgressEventType(StrEnum):
    ACCEPTED = "accepted"
    BATCH_COMPLETE = "batch_complete"
    COMPLETE = "complete"
    CANCELLED = "cancelled"  # 1.1: the terminal event of a cancelled job


class AcceptedData(BaseModel):
    total_items: int
    estimated_time_seconds: float
    status: Literal[JobStatus.PROCESSING] = JobStatus.PROCESSING
    # 1.1, resumed jobs: items already published by an earlier owner. Absent
    # (not null) on a fresh job, so 1.0 readers see the message they know.
    resumed_items: Annotated[int, Field(ge=0)] | None = Field(default=None, exclude_if=lambda v: v is None)


class ItemSummary(BaseModel):
    id_alumno: str
    item_index: int
    status: ItemStatus
    nota: int | None
    feedback: str | None
    # 1.2: as in the result (ok items only; absent otherwise).
    nota_probabilities: GradeProbabilities | None = Field(default=None, exclude_if=lambda v: v is None)
    confidence: Probability | None = Field(default=None, exclude_if=lambda v: v is None)
    needs_review: bool | None = Field(default=None, exclude_if=lambda v: v is None)
    # 1.3: as in the result.
    review_reasons: list[ReviewReason] | None = Field(default=None, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _fields_agree(self) -> ItemSummary:
        _check_distribution(
            self.status, self.nota, self.nota_probabilities, self.confidence, self.needs_review, self.review_reasons
        )
        return self


class ProgressFigures(BaseModel):
    completed: int
    total: int
    percentage: float
    elapsed_seconds: float
    estimated_remaining_seconds: float
    avg_time_per_item: float


class BatchCompleteData(BaseModel):
    batch_number: int
    results: list[ItemSummary]
    progress: ProgressFigures


class CompleteData(BaseModel):
    total_processed: int
    succeeded: int
    failed: int
    total_time_seconds: float
    status: Literal[JobStatus.COMPLETED] = JobStatus.COMPLETED
    # 1.2: how many of the job's ok results have needs_review (absent when
    # the grade distribution is off).
    needs_review: Annotated[int, Field(ge=0)] | None = Field(default=None, exclude_if=lambda v: v is None)


class CancelledData(BaseModel):
    """1.1: counts over the whole job at the cancel; ungraded items get no result."""

    total_items: int
    completed: int
    succeeded: int
    failed: int
    total_time_seconds: float
    status: Literal[JobStatus.CANCELLED] = JobStatus.CANCELLED


class _ProgressEnvelope(BaseModel):
    """The envelope every progress event shares, written once; each event narrows ``event`` and ``data``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event: ProgressEventType
    job_id: str
    data: BaseModel


class AcceptedEvent(_ProgressEnvelope):
    event: Literal[ProgressEventType.ACCEPTED] = ProgressEventType.ACCEPTED
    data: AcceptedData


class BatchCompleteEvent(_ProgressEnvelope):
    event: Literal[ProgressEventType.BATCH_COMPLETE] = ProgressEventType.BATCH_COMPLETE
    data: BatchCompleteData


class CompleteEvent(_ProgressEnvelope):
    event: Literal[ProgressEventType.COMPLETE] = ProgressEventType.COMPLETE
    data: CompleteData


class CancelledEvent(_ProgressEnvelope):
    event: Literal[ProgressEventType.CANCELLED] = ProgressEventType.CANCELLED
    data: CancelledData


ProgressEvent = Annotated[
    AcceptedEvent | BatchCompleteEvent | CompleteEvent | CancelledEvent, Field(discriminator="event")
]
TERMINAL_EVENTS = frozenset({ProgressEventType.COMPLETE, ProgressEventType.CANCELLED})


# --- control commands (1.1; topic evaluation.control, keyed by job_id) ---


class ControlAction(StrEnum):
    CANCEL = "cancel"
    # 1.2: cancel if running, delete the job's state, and grade no later
    # request under its id within CANCEL_TTL_S (docs/privacy.md, "Erasing a job").
    ERASE = "erase"


class ControlCommand(BaseModel):
    """An instruction to whichever consumer owns ``job_id``. Unknown extra fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Annotated[Literal[1], BeforeValidator(_not_bool)] = SCHEMA_VERSION
    action: ControlAction
    job_id: Annotated[StrictStr, Field(pattern=JOB_ID_PATTERN)]
    # 1.2: who sent it. A cancel or an erase is honoured only for a job of ``tenant``, or
    # with ``admin`` (an operator). Omitted when unset, so 1.1 readers and
    # commands look as before.
    tenant: Annotated[StrictStr, Field(pattern=TENANT_PATTERN)] | None = Field(
        default=None, exclude_if=lambda v: v is None
    )
    admin: StrictBool = Field(default=False, exclude_if=lambda v: v is False)


# --- decision records (1.3; topic evaluation.decisions, keyed by job_id) ---


class DecisionKind(StrEnum):
    GRADE = "grade"  # a grade released (one per ok result)
    CORRECTION = "correction"  # a teacher's correction applied
    ERASED = "erased"  # the job's data erased (its records stay: no text, no name)


class GradeRecord(BaseModel):
    """Which model, prompt and distribution gave a released grade. No text, feedback or id_alumno."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    record: Literal[DecisionKind.GRADE] = DecisionKind.GRADE
    result_id: str
    job_id: str
    tenant: str | None
    item_index: Annotated[int, Field(ge=0)]
    # HMAC-SHA-256 (hex) of the item's respuesta, as the student wrote it, under DECISIONS_HMAC_KEY.
    answer_hmac: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    model: str
    model_revision: str | None
    prompt_format: str
    prompt_sha256: str
    sampling: Sampling
    nota: Annotated[int, Field(ge=0, le=5)]
    nota_probabilities: GradeProbabilities | None
    confidence: Probability | None
    review_reasons: list[ReviewReason]
    graded_at: datetime


class CorrectionRecord(BaseModel):
    """A teacher's correction as it was applied (``previous_nota``: null when the writer did not know it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    record: Literal[DecisionKind.CORRECTION] = DecisionKind.CORRECTION
    result_id: str
    job_id: str
    tenant: str | None
    item_index: Annotated[int, Field(ge=0)]
    nota: Annotated[int, Field(ge=0, le=5)]
    previous_nota: Annotated[int, Field(ge=0, le=5)] | None
    by: str  # who: a key's id (never the key), "cli" for texteval correct, or "anonymous"
    corrected_at: datetime
    applied_at: datetime


class ErasedRecord(BaseModel):
    """The job's data was erased; its records stay, and every reader of corrections skips the job."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    record: Literal[DecisionKind.ERASED] = DecisionKind.ERASED
    job_id: str
    tenant: str | None
    at: datetime


DecisionRecord = Annotated[GradeRecord | CorrectionRecord | ErasedRecord, Field(discriminator="record")]
