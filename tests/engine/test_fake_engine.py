"""The shared grading flow (length check, validation, retry, failures) through the fake engine."""

from __future__ import annotations

import asyncio
import json

import pytest

from consumer.contract import ErrorCode, Item, ItemStatus
from consumer.engine.base import GradingEngine
from consumer.engine.fake import FakeEngine, deterministic_script
from consumer.engine.output import Generation

ITEM = Item(id_alumno="A1", curso="3r ESO", consigna="Explica la fotosíntesi.", respuesta="Les plantes fan sucre.")


def valid(nota: int = 3) -> Generation:
    return Generation(json.dumps({"nota": nota, "feedback": "Correcte."}), "stop", 10)


CUT_OFF = Generation('{"nota": 2, "feedback": "1.1.1.1.1', "length", 200)


def test_fake_engine_implements_the_protocol() -> None:
    engine: GradingEngine = FakeEngine()
    assert engine.health().loaded


async def test_valid_generation_is_an_ok_outcome() -> None:
    outcome = await FakeEngine(script=lambda item, attempt: valid(4)).grade(ITEM, "r1")
    assert (outcome.status, outcome.nota, outcome.feedback, outcome.error) == (
        ItemStatus.OK,
        4,
        "Correcte.",
        None,
    )
    assert outcome.attempts == 1 and len(outcome.prompt_sha256) == 64


async def test_a_cut_off_output_is_retried_with_the_next_attempt() -> None:
    seen: list[int] = []

    def script(item: Item, attempt: int) -> Generation:
        seen.append(attempt)
        return CUT_OFF if attempt == 0 else valid(2)

    outcome = await FakeEngine(script=script).grade(ITEM, "r1")
    assert outcome.status is ItemStatus.OK and outcome.nota == 2
    assert seen == [0, 1] and outcome.attempts == 2 and outcome.output_tokens == 210


async def test_output_that_stays_invalid_is_an_error_never_a_grade() -> None:
    outcome = await FakeEngine(script=lambda item, attempt: CUT_OFF, attempts=2).grade(ITEM, "r1")
    assert outcome.status is ItemStatus.ERROR
    assert outcome.nota is None and outcome.feedback is None
    assert outcome.error is not None and outcome.error.code is ErrorCode.INVALID_OUTPUT
    assert outcome.attempts == 2


async def test_out_of_range_grade_is_invalid_output() -> None:
    bad = Generation('{"nota": 7, "feedback": "x"}', "stop", 5)
    outcome = await FakeEngine(script=lambda item, attempt: bad, attempts=1).grade(ITEM, "r1")
    assert outcome.error is not None and outcome.error.code is ErrorCode.INVALID_OUTPUT and outcome.nota is None


async def test_engine_exception_is_engine_error() -> None:
    def boom(item: Item, attempt: int) -> Generation:
        raise RuntimeError("worker crashed")

    outcome = await FakeEngine(script=boom).grade(ITEM, "r1")
    assert outcome.status is ItemStatus.ERROR and outcome.nota is None
    assert outcome.error is not None and outcome.error.code is ErrorCode.ENGINE_ERROR
    assert "RuntimeError: worker crashed" in outcome.error.message


async def test_too_long_input_is_rejected_without_calling_the_model() -> None:
    engine = FakeEngine(max_model_len=512)
    long_item = ITEM.model_copy(update={"respuesta": "paraula " * 2000})
    outcome = await engine.grade(long_item, "r1")
    assert outcome.error is not None and outcome.error.code is ErrorCode.INPUT_TOO_LONG
    assert engine.calls == 0 and outcome.nota is None
    assert "MAX_MODEL_LEN" in outcome.error.message and "paraula" not in outcome.error.message


async def test_dead_engine_goes_red_and_grades_fail_typed() -> None:
    engine = FakeEngine()
    engine.kill("out of memory")
    assert not engine.health().loaded and "out of memory" in engine.health().detail
    outcome = await engine.grade(ITEM, "r1")
    assert outcome.error is not None and outcome.error.code is ErrorCode.ENGINE_ERROR


async def test_cancelling_a_grade_propagates() -> None:
    engine = FakeEngine(delay_s=10)
    task = asyncio.create_task(engine.grade(ITEM, "r1"))
    await asyncio.sleep(0.01)
    assert engine.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.in_flight == 0


def test_default_script_is_deterministic_per_text() -> None:
    other = ITEM.model_copy(update={"respuesta": "Una altra."})
    assert deterministic_script(ITEM, 0) == deterministic_script(ITEM, 1)
    assert deterministic_script(ITEM, 0).text != deterministic_script(other, 0).text
