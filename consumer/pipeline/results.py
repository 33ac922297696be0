"""Engine outcome -> the contract's result message (the service and offline grading build it alike)."""

from __future__ import annotations

from typing import Any

from consumer.contract import EvaluationResult, Item, ItemSummary, result_id, utc_now
from consumer.engine.base import GradeOutcome, GradingEngine


def build_result(
    *, job_id: str, item_index: int, item: Item, outcome: GradeOutcome, engine: GradingEngine
) -> EvaluationResult:
    """The result of ``item`` (the ``item_index``-th of ``job_id``) as ``engine`` graded it."""
    return EvaluationResult(
        result_id=result_id(job_id, item_index),
        job_id=job_id,
        item_index=item_index,
        id_alumno=item.id_alumno,
        status=outcome.status,
        nota=outcome.nota,
        feedback=outcome.feedback,
        error=outcome.error,
        model=engine.model_name,
        prompt_sha256=outcome.prompt_sha256,
        sampling=engine.sampling,
        latency_ms=round(outcome.latency_ms, 3),
        produced_at=utc_now(),
        **confidence_fields(outcome),
    )


def build_summary(*, item_index: int, item: Item, outcome: GradeOutcome) -> ItemSummary:
    """The item's line in a ``batch_complete`` event: the result's grade and its 1.2 confidence fields."""
    return ItemSummary(
        id_alumno=item.id_alumno,
        item_index=item_index,
        status=outcome.status,
        nota=outcome.nota,
        feedback=outcome.feedback,
        **confidence_fields(outcome),
    )


def confidence_fields(outcome: GradeOutcome) -> dict[str, Any]:
    """Contract 1.2's ``nota_probabilities``, ``confidence``, ``needs_review`` (none without a
    distribution) and 1.3's ``review_reasons`` (none when nothing was read: no screening, no distribution)."""
    fields: dict[str, Any] = {}
    if outcome.review_reasons is not None:
        fields["review_reasons"] = list(outcome.review_reasons)
    graded = outcome.grade_confidence
    if graded is None:
        return fields
    return {
        **fields,
        "nota_probabilities": list(graded.probabilities),
        "confidence": graded.confidence,
        "needs_review": graded.needs_review,
    }


def needs_review(outcome: GradeOutcome) -> bool:
    """Counted into the ``complete`` event's ``needs_review``."""
    return outcome.grade_confidence is not None and outcome.grade_confidence.needs_review
