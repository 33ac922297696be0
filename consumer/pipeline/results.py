"""Engine outcome -> the contract's result message, and result files."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from consumer.contract import EvaluationResult, Sampling, result_id, utc_now
from consumer.engine.base import GradeOutcome


def build_result(
    *, job_id: str, item_index: int, id_alumno: str, outcome: GradeOutcome, model: str, sampling: Sampling
) -> EvaluationResult:
    return EvaluationResult(
        result_id=result_id(job_id, item_index),
        job_id=job_id,
        item_index=item_index,
        id_alumno=id_alumno,
        status=outcome.status,
        nota=outcome.nota,
        feedback=outcome.feedback,
        error=outcome.error,
        model=model,
        prompt_sha256=outcome.prompt_sha256,
        sampling=sampling,
        latency_ms=round(outcome.latency_ms, 3),
        produced_at=utc_now(),
    )


CSV_COLUMNS = (
    "result_id", "job_id", "item_index", "id_alumno", "status", "nota", "feedback",
    "error_code", "error_message", "model", "prompt_sha256", "temperature", "top_p",
    "max_tokens", "seed", "latency_ms", "produced_at",
)  # fmt: skip


def _flat_row(result: EvaluationResult) -> dict[str, Any]:
    data = result.model_dump(mode="json")
    error = data.pop("error") or {}
    data.update(data.pop("sampling"))
    data["error_code"], data["error_message"] = error.get("code"), error.get("message")
    return {column: data.get(column) for column in CSV_COLUMNS}


def write_results(results: Iterable[EvaluationResult], path: Path) -> None:
    """CSV (one flat row per result) or JSONL (the result messages as sent)."""
    ordered = sorted(results, key=lambda r: (r.job_id, r.item_index))
    if path.suffix.lower() == ".jsonl":
        with path.open("w", encoding="utf-8") as handle:
            for result in ordered:
                handle.write(result.model_dump_json() + "\n")
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(_flat_row(r) for r in ordered)


def read_results(path: Path) -> list[EvaluationResult]:
    """Inverse of ``write_results`` for JSONL files."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [EvaluationResult.model_validate(json.loads(line)) for line in lines if line.strip()]
