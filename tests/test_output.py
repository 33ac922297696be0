"""Model output validation: anything but a clean grade is invalid_output, never a nota."""

from __future__ import annotations

import json

import pytest

from consumer.contract import ErrorCode
from consumer.engine.output import Generation, OutputError, ParsedGrade, output_schema, parse_generation


def gen(text: str, finish: str | None = "stop") -> Generation:
    return Generation(text=text, finish_reason=finish, output_tokens=len(text))


def test_valid_output_is_a_grade() -> None:
    verdict = parse_generation(gen('{"nota": 4, "feedback": " Bon treball. "}'))
    assert verdict == ParsedGrade(nota=4, feedback="Bon treball.")


@pytest.mark.parametrize("nota", [0, 5])
def test_grade_bounds_are_inclusive(nota: int) -> None:
    assert parse_generation(gen(json.dumps({"nota": nota, "feedback": "x"}))) == ParsedGrade(nota, "x")


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        ('{"nota": 4, "feedback": "Bon tre', "length", "cut off"),
        ('{"nota": 4, "feedback": "ok"}', "length", "cut off"),  # even parseable text: cut off is cut off
        ('{"nota": 4, "feedback": "ok"}', "abort", "abort"),
        ("Nota: 4. Bon treball", "stop", "not JSON"),
        ("", "stop", "not JSON"),
        ('[4, "ok"]', "stop", "not a JSON object"),
        ('{"nota": 6, "feedback": "ok"}', "stop", "nota"),
        ('{"nota": -1, "feedback": "ok"}', "stop", "nota"),
        ('{"nota": "4", "feedback": "ok"}', "stop", "nota"),
        ('{"nota": 4.0, "feedback": "ok"}', "stop", "nota"),
        ('{"nota": true, "feedback": "ok"}', "stop", "nota"),
        ('{"nota": null, "feedback": "ok"}', "stop", "nota"),
        ('{"feedback": "ok"}', "stop", "nota"),
        ('{"nota": 3}', "stop", "feedback"),
        ('{"nota": 3, "feedback": "   "}', "stop", "feedback"),
        ('{"nota": 3, "feedback": 7}', "stop", "feedback"),
    ],
)
def test_invalid_outputs_are_typed_errors(text: str, finish: str, reason: str) -> None:
    verdict = parse_generation(gen(text, finish))
    assert isinstance(verdict, OutputError)
    assert verdict.code is ErrorCode.INVALID_OUTPUT
    assert reason in verdict.message
    # The message never quotes the model's text (it may quote the student).
    assert "Bon tre" not in verdict.message


def test_schema_bounds_the_feedback_and_fixes_key_order() -> None:
    schema = output_schema(176)
    assert list(schema["properties"]) == ["nota", "feedback"]
    assert schema["properties"]["feedback"]["maxLength"] == 176
    assert schema["properties"]["nota"]["enum"] == [0, 1, 2, 3, 4, 5]
    assert schema["additionalProperties"] is False
