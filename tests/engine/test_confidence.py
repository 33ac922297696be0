"""Contract 1.2's grade distribution: read at the grade position, summed over a digit's tokens, renormalised."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping

import pytest

from consumer.contract import ErrorCode, EvaluationResult, Item, ItemStatus, Sampling
from consumer.engine.base import GradeOutcome
from consumer.engine.confidence import (
    GradeConfidence,
    GradeDigits,
    GradeDistribution,
    fake_distribution,
    grade_distribution,
)
from consumer.engine.fake import FakeEngine, deterministic_script
from consumer.engine.output import Generation
from consumer.pipeline.results import build_result, build_summary, needs_review

# Gemma's layout: each digit has its own token and a byte-fallback one ("<0x33>").
GEMMA_LIKE = GradeDigits(by_prefix={"": {**{100 + d: d for d in range(6)}, **{200 + d: d for d in range(6)}}})
OPEN, NOTA, COMMA = 1, 2, 3  # `{"`, `nota": `, `, "feedback": "...` stand-ins


def logprobs_of(probabilities: Mapping[int, float]) -> dict[int, float]:
    return {token: math.log(p) if p > 0 else -math.inf for token, p in probabilities.items()}


def test_the_grade_position_is_the_first_digit_token_and_a_digit_sums_its_tokens() -> None:
    # Position 2 is the grade (token 103 = "3"); the later digit 101 (a "1" in
    # the feedback) must not be read.
    tokens = [OPEN, NOTA, 103, COMMA, 101]
    at_grade = logprobs_of({103: 0.5, 203: 0.1, 102: 0.2, 104: 0.1, 105: 0.05, 100: 0.05})
    positions: list[int] = []

    def at(position: int) -> dict[int, float]:
        positions.append(position)
        return at_grade if position == 2 else logprobs_of({101: 1.0})

    found = grade_distribution(tokens, at, GEMMA_LIKE)
    assert positions == [2]
    assert found is not None and found.grade == 3
    assert found.probabilities == pytest.approx([0.05, 0.0, 0.2, 0.6, 0.1, 0.05])
    assert sum(found.probabilities) == pytest.approx(1.0)


def test_mass_outside_the_digits_is_renormalised_away() -> None:
    # Raw log-probabilities from a backend that did not mask: the digits hold 0.4.
    at_grade = logprobs_of({104: 0.3, 103: 0.1})
    found = grade_distribution([NOTA, 104], lambda _: at_grade, GEMMA_LIKE)
    assert found is not None
    assert found.probabilities == pytest.approx([0, 0, 0, 0.25, 0.75, 0])


def test_no_digit_token_or_no_mass_gives_no_distribution() -> None:
    assert grade_distribution([OPEN, NOTA, COMMA], lambda _: {}, GEMMA_LIKE) is None
    assert grade_distribution([NOTA, 103], lambda _: {103: -math.inf, 7: 0.0}, GEMMA_LIKE) is None
    assert grade_distribution([NOTA, 103], lambda _: {103: math.nan}, GEMMA_LIKE) is None


def test_a_token_joining_space_and_digit_compares_with_its_own_kind() -> None:
    # GPT-2 style pieces (" 3"): the alternatives are the other " d" tokens, not the bare digits.
    digits = GradeDigits(by_prefix={"": {100 + d: d for d in range(6)}, " ": {300 + d: d for d in range(6)}})
    found = grade_distribution([NOTA, 302], lambda _: logprobs_of({302: 0.6, 303: 0.2, 102: 0.2}), digits)
    assert found is not None and found.grade == 2
    assert found.probabilities == pytest.approx([0, 0, 0.75, 0.25, 0, 0])


class _Tokenizer:
    """The two methods GradeDigits uses, with Gemma's pieces for the digits."""

    def __init__(self, pieces: dict[str, int], texts: dict[int, str]) -> None:
        self._pieces, self._texts = pieces, texts

    def get_vocab(self) -> dict[str, int]:
        return self._pieces

    def decode(self, ids: list[int]) -> str:
        return self._texts[ids[0]]


def test_digit_tokens_are_found_by_what_they_decode_to() -> None:
    pieces = {**{str(d): 236771 + d for d in range(10)}, **{f"<0x3{d}>": 286 + d for d in range(10)}}
    pieces |= {"▁3": 999, "13": 998, "3a": 997, "word": 5}
    texts = {i: (p[-2] if p.startswith("<0x") else p.replace("▁", " ")) for p, i in pieces.items()}
    digits = GradeDigits.from_tokenizer(_Tokenizer(pieces, texts))  # type: ignore[arg-type]
    assert digits.by_prefix[""] == {**{236771 + d: d for d in range(6)}, **{286 + d: d for d in range(6)}}
    assert digits.by_prefix[" "] == {999: 3}
    assert 998 not in digits.token_ids and 997 not in digits.token_ids and 236777 not in digits.token_ids


def test_a_tokenizer_without_the_six_digits_is_refused() -> None:
    pieces = {str(d): d for d in range(5)}  # no "5"
    with pytest.raises(ValueError, match=r"0\.\.5"):
        GradeDigits.from_tokenizer(_Tokenizer(pieces, {i: p for p, i in pieces.items()}))  # type: ignore[arg-type]


@pytest.mark.parametrize(("threshold", "flagged"), [(0.5, True), (0.45, False)])
def test_confidence_is_the_probability_of_the_grade_and_review_is_below_the_threshold(
    threshold: float, flagged: bool
) -> None:
    graded = GradeConfidence.of(2, [0.1, 0.2, 0.45, 0.15, 0.05, 0.05], threshold)
    assert graded.confidence == 0.45 and graded.needs_review is flagged
    assert sum(graded.probabilities) == pytest.approx(1.0, abs=1e-5)


def test_fake_distribution_is_deterministic_plausible_and_peaked_at_the_grade() -> None:
    for n in range(300):
        nota = n % 6
        probabilities = fake_distribution(nota, f"text {n}")
        assert probabilities == fake_distribution(nota, f"text {n}")
        assert len(probabilities) == 6 and sum(probabilities) == pytest.approx(1.0)
        assert max(probabilities) == probabilities[nota] and 0.45 <= probabilities[nota] <= 0.98
        assert all(p > 0 for p in probabilities)


ITEM = Item(id_alumno="a1", curso="4t ESO", consigna="Explica.", respuesta="Una resposta.")


def _grade(engine: FakeEngine) -> GradeOutcome:
    return asyncio.run(engine.grade(ITEM, "r"))


def test_fake_engine_results_carry_the_fields_and_error_results_none() -> None:
    engine = FakeEngine()
    outcome = _grade(engine)
    result = build_result(job_id="j", item_index=0, item=ITEM, outcome=outcome, engine=engine)
    assert result.status is ItemStatus.OK and result.nota is not None and result.nota_probabilities is not None
    assert result.confidence == result.nota_probabilities[result.nota]
    assert result.needs_review is (result.confidence < 0.5)
    summary = build_summary(item_index=0, item=ITEM, outcome=outcome).model_dump(mode="json")
    assert summary["nota_probabilities"] == result.nota_probabilities
    assert summary["confidence"] == result.confidence and summary["needs_review"] == result.needs_review
    assert needs_review(outcome) is result.needs_review

    def invalid(item: Item, attempt: int) -> Generation:
        return Generation(text="not json", finish_reason="stop", output_tokens=2)

    failed = _grade(FakeEngine(script=invalid))
    payload = build_result(job_id="j", item_index=1, item=ITEM, outcome=failed, engine=engine).model_dump(mode="json")
    assert payload["status"] == "error"
    assert not {"nota_probabilities", "confidence", "needs_review"} & set(payload)
    assert needs_review(failed) is False


def test_the_distribution_can_be_switched_off() -> None:
    engine = FakeEngine(review_below=None)
    payload = build_result(job_id="j", item_index=0, item=ITEM, outcome=_grade(engine), engine=engine)
    assert not {"nota_probabilities", "confidence", "needs_review"} & set(payload.model_dump(mode="json"))


def test_a_distribution_of_another_grade_is_not_a_grade() -> None:
    def misread(item: Item, attempt: int) -> Generation:
        generation = deterministic_script(item, attempt)
        wrong = GradeDistribution(grade=(generation.distribution.grade + 1) % 6, probabilities=(1 / 6,) * 6)  # type: ignore[union-attr]
        return Generation(generation.text, "stop", generation.output_tokens, distribution=wrong)

    outcome = _grade(FakeEngine(script=misread, attempts=1))
    assert outcome.error is not None and outcome.error.code is ErrorCode.INVALID_OUTPUT
    assert outcome.grade_confidence is None


def test_the_contract_refuses_fields_that_disagree() -> None:
    base = {
        "result_id": "j#0", "job_id": "j", "item_index": 0, "id_alumno": "a", "status": "ok", "nota": 2,
        "feedback": "ok", "error": None, "model": "m", "prompt_sha256": "x", "latency_ms": 1.0,
        "produced_at": "2026-12-02T10:00:00Z",
        "sampling": Sampling(temperature=0.1, top_p=0.95, max_tokens=380, seed=0),
    }  # fmt: skip
    good = {"nota_probabilities": [0, 0.1, 0.6, 0.3, 0, 0], "confidence": 0.6, "needs_review": False}
    EvaluationResult.model_validate(base | good)
    for bad in (
        {"nota_probabilities": [0, 0.1, 0.6, 0.4, 0, 0]},  # sums to 1.1
        {"confidence": 0.3},  # not the nota's probability
        {"needs_review": None},  # the three come together
    ):
        with pytest.raises(ValueError):
            EvaluationResult.model_validate(base | good | bad)
    error = base | {
        "status": "error",
        "nota": None,
        "feedback": None,
        "error": {"code": "engine_error", "message": "x"},
    }
    with pytest.raises(ValueError):
        EvaluationResult.model_validate(error | good)


def test_the_result_schema_takes_the_fields_on_ok_results_and_refuses_them_on_errors() -> None:
    import json

    import jsonschema

    from tests.helpers import REPO

    schema = json.loads((REPO / "schemas" / "evaluation-result.schema.json").read_text(encoding="utf-8"))
    engine = FakeEngine()
    payload = build_result(job_id="j", item_index=0, item=ITEM, outcome=_grade(engine), engine=engine)
    ok = payload.model_dump(mode="json")
    jsonschema.validate(ok, schema)
    error = ok | {"status": "error", "nota": None, "feedback": None, "error": {"code": "engine_error", "message": "m"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(error, schema)


def test_logits_give_the_same_distribution_as_log_probabilities_and_cannot_overflow() -> None:
    # logprobs_mode="raw_logits": log-probabilities plus one constant per position.
    probabilities = {100: 0.05, 102: 0.2, 103: 0.5, 203: 0.1, 104: 0.1, 105: 0.05}
    logprobs = logprobs_of(probabilities)
    for offset in (0.0, 37.5, 800.0, -800.0):  # exp(800) alone overflows a float
        logits = {token: value + offset for token, value in logprobs.items()}
        found = grade_distribution([NOTA, 103], lambda _, at=logits: at, GEMMA_LIKE)
        assert found is not None and found.grade == 3
        assert found.probabilities == pytest.approx([0.05, 0.0, 0.2, 0.6, 0.1, 0.05])
