"""Read items from the files people have: a request (JSON), requests or items
(JSONL), or a spreadsheet export (CSV with the four item columns).

Every item passes the same validation as a Kafka request, so a file that
grades offline also submits cleanly.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from consumer.contract import EvaluationRequest, Item


class InputFileError(ValueError):
    """The file cannot be read as items; the message says where and why."""


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
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        records: list[dict[str, Any]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.extend(_as_items(json.loads(line), f"line {number}"))
                except json.JSONDecodeError as exc:
                    raise InputFileError(f"line {number}: not JSON ({exc.msg})") from exc
        return records
    if suffix == ".json":
        try:
            return _as_items(json.loads(text), str(path.name))
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{path.name}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    raise InputFileError(f"{path.name}: unknown file type (use .json, .jsonl or .csv)")


def read_items(path: Path, max_items: int) -> list[Item]:
    records = _raw_records(path)
    try:
        request = EvaluationRequest.model_validate({"items": records}, context={"max_items": max_items})
    except ValidationError as exc:
        # Location and message only: pydantic's default text quotes the input.
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5])
        raise InputFileError(f"{path.name}: {problems}") from None
    return request.items


def job_id_for(path: Path) -> str:
    """A contract-valid job id from a file name."""
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/-")
    stem = "".join(ch if ch in allowed else "-" for ch in path.stem) or "job"
    return f"file:{stem}"[:128]
