"""The request/result contract, and schemas/ kept in step with the models."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from consumer.contract import EvaluationRequest, EvaluationResult, ItemStatus, Sampling
from consumer.schemas import all_schemas, render
from tests.helpers import REPO

ITEM = {"id_alumno": "A1", "curso": "3r ESO", "consigna": "Explica.", "respuesta": "Resposta."}


def request(**overrides: object) -> dict[str, object]:
    return {"job_id": "school-42/term-1/batch-7", "items": [ITEM], **overrides}


def test_valid_request_keeps_texts_as_given() -> None:
    raw = request(items=[{**ITEM, "respuesta": "  Amb espais \n"}])
    parsed = EvaluationRequest.model_validate(raw)
    assert parsed.items[0].respuesta == "  Amb espais \n" and parsed.schema_version == 1


def test_job_id_is_optional() -> None:
    assert EvaluationRequest.model_validate({"items": [ITEM]}).job_id is None


def test_unknown_fields_are_ignored() -> None:
    parsed = EvaluationRequest.model_validate(request(extra="x", items=[{**ITEM, "grup": "B"}]))
    assert parsed.items[0].model_dump() == ITEM


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (request(items=[]), "items"),
        (request(items=[ITEM] * 2001), "items"),
        (request(job_id="bad id with spaces"), "job_id"),
        (request(job_id="x" * 129), "job_id"),
        (request(job_id=""), "job_id"),
        (request(items=[{**ITEM, "respuesta": "   "}]), "items.0.respuesta"),
        (request(items=[{**ITEM, "curso": ""}]), "items.0.curso"),
        (request(items=[{k: v for k, v in ITEM.items() if k != "consigna"}]), "items.0.consigna"),
        (request(items=[{**ITEM, "id_alumno": 42}]), "items.0.id_alumno"),
        (request(items=[{**ITEM, "respuesta": "x" * 20_001}]), "items.0.respuesta"),
        (request(items=[{**ITEM, "id_alumno": "x" * 129}]), "items.0.id_alumno"),
        (request(schema_version=2), "schema_version"),
    ],
)
def test_contract_violations_name_the_field(raw: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        EvaluationRequest.model_validate(raw)
    locations = {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}
    assert where in locations


def test_item_cap_is_a_setting() -> None:
    with pytest.raises(ValidationError):
        EvaluationRequest.model_validate(request(items=[ITEM] * 3), context={"max_items": 2})
    assert len(EvaluationRequest.model_validate(request(items=[ITEM] * 3), context={"max_items": 3}).items) == 3


def _result(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "result_id": "j#0", "job_id": "j", "item_index": 0, "id_alumno": "A1", "status": "ok",
        "nota": 4, "feedback": "Bé", "error": None, "model": "m", "prompt_sha256": "0" * 64,
        "sampling": Sampling(temperature=0.1, top_p=0.95, max_tokens=200, seed=0).model_dump(),
        "latency_ms": 1.5, "produced_at": datetime.now(UTC).isoformat(),
    }  # fmt: skip
    return {**base, **overrides}


def test_result_status_must_match_its_fields() -> None:
    assert EvaluationResult.model_validate(_result()).status is ItemStatus.OK
    error = {"code": "invalid_output", "message": "cut off"}
    assert EvaluationResult.model_validate(_result(status="error", nota=None, feedback=None, error=error))
    with pytest.raises(ValidationError):  # an error can never carry a grade
        EvaluationResult.model_validate(_result(status="error", nota=0, feedback=None, error=error))
    with pytest.raises(ValidationError):
        EvaluationResult.model_validate(_result(nota=None))
    with pytest.raises(ValidationError):
        EvaluationResult.model_validate(_result(nota=6))


def test_schemas_directory_matches_the_models() -> None:
    # Regenerate with `make schemas` after changing consumer/contract.py.
    for name, schema in all_schemas().items():
        path = REPO / "schemas" / name
        assert path.exists(), f"schemas/{name} missing: run make schemas"
        assert path.read_text(encoding="utf-8") == render(schema), f"schemas/{name} is stale: run make schemas"


def test_result_schema_accepts_a_real_result_and_rejects_a_graded_error() -> None:
    import jsonschema

    schema = json.loads((REPO / "schemas" / "evaluation-result.schema.json").read_text())
    jsonschema.validate(EvaluationResult.model_validate(_result()).model_dump(mode="json"), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_result(nota=9), schema)
    error = {"code": "engine_error", "message": "x"}
    with pytest.raises(jsonschema.ValidationError):  # a failed item with a grade
        jsonschema.validate(_result(status="error", nota=0, feedback=None, error=error), schema)
    jsonschema.validate(_result(status="error", nota=None, feedback=None, error=error), schema)
