"""The files people have, in and out.

In: a request (JSON), requests or items (JSONL), or a spreadsheet export
(CSV with the four item columns). Every item passes the same validation as a
Kafka request, so a file that grades offline also submits cleanly.
Out: results as CSV (one flat row each, with 1.2's ``confidence`` and
``needs_review``) or JSONL (the messages as sent, ``nota_probabilities`` too),
owner-only (0600); the CSV is one a teacher can open (``consumer.spreadsheets``:
no formula cells, a UTF-8 byte-order mark). CSV in is read with or without
that mark (a spreadsheet's "CSV UTF-8" export has one).

JSONL is read in one place (`read_jsonl`) for items, requests, manifests
and result files.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from consumer.contract import EvaluationRequest, EvaluationResult, Item
from consumer.spreadsheets import csv_text, write_private
from consumer.validation import validation_problems


class InputFileError(ValueError):
    """The file cannot be read; the message says where and why."""


def read_jsonl(
    path: Path,
    *,
    error: type[InputFileError] = InputFileError,
    where: Callable[[int], str] = lambda number: f"line {number}",
) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) for each non-blank line; ``error`` with
    ``where(number): not JSON (...)`` on a line that is not JSON."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where(number)}: not JSON ({exc.msg})") from None


def _as_items(record: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(record, dict) and "items" in record:
        items = record["items"]
        if not isinstance(items, list):
            raise InputFileError(f"{where}: 'items' is not a list")
        return items
    if isinstance(record, list):
        return record
    if isinstance(record, dict):
        return [record]
    raise InputFileError(f"{where}: expected an object or a list, got {type(record).__name__}")


def _raw_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    if suffix == ".jsonl":
        return [item for number, record in read_jsonl(path) for item in _as_items(record, f"line {number}")]
    if suffix == ".json":
        try:
            return _as_items(json.loads(path.read_text(encoding="utf-8")), str(path.name))
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{path.name}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    raise InputFileError(f"{path.name}: unknown file type (use .json, .jsonl or .csv)")


def read_items(path: Path, max_items: int) -> list[Item]:
    return validate_request({"items": _raw_records(path)}, max_items, where=path.name).items


def validate_request(value: Any, max_items: int, *, where: str) -> EvaluationRequest:
    """The contract's validation of a request read from a file; `InputFileError` names the fields, never the text."""
    try:
        return EvaluationRequest.model_validate(value, context={"max_items": max_items})
    except ValidationError as exc:
        raise InputFileError(f"{where}: {validation_problems(exc)}") from None


def job_id_for(path: Path) -> str:
    """A contract-valid job id from a file name."""
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/-")
    stem = "".join(ch if ch in allowed else "-" for ch in path.stem) or "job"
    return f"file:{stem}"[:128]


# 1.2: `confidence` and `needs_review` beside the grade (empty on error
# results and when the distribution is off); the six `nota_probabilities`
# stay in JSONL, where a program reads them as one list.
CSV_COLUMNS = (
    "result_id", "job_id", "item_index", "id_alumno", "status", "nota", "feedback",
    "confidence", "needs_review", "error_code", "error_message", "model", "prompt_sha256", "temperature", "top_p",
    "max_tokens", "seed", "latency_ms", "produced_at",
)  # fmt: skip


def _flat_row(result: EvaluationResult) -> dict[str, Any]:
    data = result.model_dump(mode="json")
    error = data.pop("error") or {}
    data.update(data.pop("sampling"))
    data["error_code"], data["error_message"] = error.get("code"), error.get("message")
    return {column: data.get(column) for column in CSV_COLUMNS}


def write_results(results: Iterable[EvaluationResult], path: Path) -> None:
    """CSV (one flat row per result) or JSONL (the result messages as sent), readable by the owner only."""
    ordered = sorted(results, key=lambda r: (r.job_id, r.item_index))
    if path.suffix.lower() == ".jsonl":
        write_private(path, "".join(result.model_dump_json() + "\n" for result in ordered))
        return
    write_private(path, csv_text(CSV_COLUMNS, (_flat_row(r) for r in ordered)))


def read_results(path: Path) -> list[EvaluationResult]:
    """Inverse of ``write_results`` for JSONL files."""
    return [EvaluationResult.model_validate(value) for _, value in read_jsonl(path)]
