"""JSON Schemas of every message, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from consumer.contract import (
    ControlCommand,
    DecisionRecord,
    EvaluationRequest,
    EvaluationResult,
    Item,
    ProgressEvent,
)
from consumer.corrections import Correction

_SCHEMA_ROOT = "https://texteval.example/schemas/v1/"


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema. The dead-letter record is the original message
    plus headers, so it has no body schema of its own (see contract.md)."""
    schemas: dict[str, dict[str, Any]] = {
        "evaluation-request.schema.json": EvaluationRequest.model_json_schema(),
        "item.schema.json": Item.model_json_schema(),
        "evaluation-result.schema.json": EvaluationResult.model_json_schema(),
        "progress-event.schema.json": TypeAdapter(ProgressEvent).json_schema(),
        "control-command.schema.json": ControlCommand.model_json_schema(),
        "correction.schema.json": Correction.model_json_schema(),  # 1.2
        "decision-record.schema.json": TypeAdapter(DecisionRecord).json_schema(),  # 1.3
    }
    for name, schema in schemas.items():
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = _SCHEMA_ROOT + name
    return schemas


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
