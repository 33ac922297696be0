"""The narrow interface between the pipeline and whatever runs the model.

Everything above the engine (the offline grader, the Kafka consumer) talks to
``GradingEngine`` only; ``VllmEngine`` is the real one and ``FakeEngine`` is a
real implementation for tests, not a mock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from consumer.contract import ErrorCode, ErrorInfo, Item, ItemStatus, ReviewReason, Sampling, utc_now
from consumer.engine.confidence import GradeConfidence


@dataclass(frozen=True, slots=True)
class GradeOutcome:
    """What the engine says about one item: a grade, or a typed error, never both."""

    status: ItemStatus
    nota: int | None
    feedback: str | None
    error: ErrorInfo | None
    prompt_sha256: str
    latency_ms: float
    output_tokens: int = 0
    attempts: int = 0
    prompt_tokens: int = 0  # per attempt
    cached_prompt_tokens: int = 0  # of those, served from the prefix cache (all attempts)
    grade_confidence: GradeConfidence | None = None  # contract 1.2; ok outcomes only, when the engine reads it
    # Contract 1.3, ok outcomes: why a teacher should look (None: neither the answer
    # was screened nor the distribution read, so nothing can be said).
    review_reasons: tuple[ReviewReason, ...] | None = None
    graded_at: datetime = field(default_factory=utc_now)  # the decision record's time: set once, kept on re-sends

    @classmethod
    def ok(cls, nota: int, feedback: str, **kw: object) -> GradeOutcome:
        return cls(ItemStatus.OK, nota, feedback, None, **kw)  # type: ignore[arg-type]

    @classmethod
    def failed(cls, code: ErrorCode, message: str, **kw: object) -> GradeOutcome:
        return cls(ItemStatus.ERROR, None, None, ErrorInfo(code=code, message=message), **kw)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class EngineHealth:
    loaded: bool
    detail: str
    device: str  # "cuda" or "cpu"
    gpu_memory: dict[str, float] = field(default_factory=dict)


class GradingEngine(Protocol):
    """Grades one item at a time; callers keep many ``grade`` calls in flight."""

    @property
    def model_name(self) -> str: ...

    @property
    def sampling(self) -> Sampling: ...

    @property
    def prompt_format(self) -> str:
        """How items become prompts (the decision record's ``prompt_format``)."""
        ...

    @property
    def model_revision(self) -> str | None:
        """The model's pinned revision, when one is (the decision record's ``model_revision``)."""
        ...

    async def grade(self, item: Item, request_id: str) -> GradeOutcome:
        """Never raises for a bad item or a bad generation (those are outcomes).

        Cancelling the call aborts the generation.
        """
        ...

    def health(self) -> EngineHealth: ...

    async def close(self) -> None: ...
