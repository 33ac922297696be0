"""Engine outcome -> the contract's result message (the service and offline grading build it alike)."""

from __future__ import annotations

from consumer.contract import EvaluationResult, Item, result_id, utc_now
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
    )
