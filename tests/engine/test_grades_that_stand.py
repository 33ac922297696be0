"""Contract 1.3 on the real engine (vLLM on CPU, the Gemma 3 270M stand-in in the fine-tune's format).

- The ``nota`` of an ok result is the argmax of its ``nota_probabilities``.
- The same text gets the same grade whatever else is in the batch: graded
  one at a time, and mixed among other items in the opposite order.
- A grade the model did not write itself (a forced grade) is continued from
  the model's own output and keeps the training layout.
- An attempt to talk to the grader does not lift the grade.

The full-size figures (36 items in three arrangements in fresh processes,
500 items twice, the held-out attacks against their clean versions) come
from ``bench/grades_that_stand.py`` and are in docs/models.md.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from consumer.contract import Item, ItemStatus, ReviewReason
from consumer.engine.base import GradeOutcome
from consumer.engine.output import Generation, parse_generation
from consumer.engine.vllm_engine import VllmEngine
from tests.helpers import sample_items

DATA = Path(__file__).resolve().parents[1] / "data" / "review"


def review_items(name: str, count: int) -> list[Item]:
    questions = {
        q["qid"]: q for q in map(json.loads, (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines())
    }
    out = []
    for line in (DATA / name).read_text(encoding="utf-8").splitlines()[:count]:
        row = json.loads(line)
        q = questions[row["qid"]]
        out.append(
            Item(id_alumno=row["id_alumno"], curso=q["curso"], consigna=q["consigna"], respuesta=row["respuesta"])
        )
    return out


def assert_most_probable(outcome: GradeOutcome) -> None:
    assert outcome.status is ItemStatus.OK and outcome.nota is not None
    sure = outcome.grade_confidence
    assert sure is not None
    assert sure.probabilities[outcome.nota] == max(sure.probabilities)
    assert outcome.review_reasons is not None and sure.needs_review == bool(outcome.review_reasons)


async def test_the_same_texts_get_the_same_grades_alone_and_mixed_in_another_order(real_engine: VllmEngine) -> None:
    texts = sample_items()[:12]
    alone = [await real_engine.grade(item, f"alone-{i}") for i, item in enumerate(texts)]
    others = review_items("mix.jsonl", 16)
    mixed_in = [*others[:8], *reversed(texts), *others[8:]]
    mixed = await asyncio.gather(*(real_engine.grade(item, f"mixed-{i}") for i, item in enumerate(mixed_in)))
    together = list(reversed(mixed[8 : 8 + len(texts)]))
    for outcome in [*alone, *mixed]:
        assert_most_probable(outcome)
    differ = [i for i, (a, b) in enumerate(zip(alone, together, strict=True)) if a.nota != b.nota]
    # A difference is allowed only where the grade is said to be close to call.
    assert all(ReviewReason.NEAR_TIE in (alone[i].review_reasons or ()) for i in differ), differ
    assert len(differ) <= 1


async def test_a_forced_grade_continues_the_models_own_output_in_the_training_layout(real_engine: VllmEngine) -> None:
    item = sample_items()[0]
    _, token_ids = real_engine.encode(item)
    final = await real_engine.generate(token_ids, 0, "free")
    completion = final.outputs[0]
    read = real_engine.distribution(completion)
    assert read is not None
    other = (read.grade + 2) % 6
    forced = await real_engine.continue_with(token_ids, list(completion.token_ids), read, other, 0, "forced")
    text = real_engine.text(forced.outputs[0])
    assert text.startswith(f'{{"nota": {other}, "feedback": "')
    verdict = parse_generation(Generation(text=text, finish_reason=forced.outputs[0].finish_reason, output_tokens=1))
    assert getattr(verdict, "nota", None) == other and getattr(verdict, "feedback", "")


async def test_an_attempt_to_talk_to_the_grader_does_not_lift_the_grade(real_engine: VllmEngine) -> None:
    rows = [json.loads(line) for line in (DATA / "attacks.jsonl").read_text(encoding="utf-8").splitlines()]
    questions = {
        q["qid"]: q for q in map(json.loads, (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines())
    }
    chosen = [r for r in rows if r["attack"] in ("note_to_grader", "instruction_override", "turn_markers")][:9]
    pairs = []
    for row in chosen:
        q = questions[row["qid"]]
        clean = Item(id_alumno=row["id_alumno"], curso=q["curso"], consigna=q["consigna"], respuesta=row["clean"])
        pairs.append((clean, clean.model_copy(update={"respuesta": row["respuesta"]})))
    graded = await asyncio.gather(
        *(real_engine.grade(item, f"pair-{i}-{j}") for i, pair in enumerate(pairs) for j, item in enumerate(pair))
    )
    for (clean_outcome, attacked_outcome), row in zip(zip(graded[::2], graded[1::2], strict=True), chosen, strict=True):
        assert_most_probable(attacked_outcome)
        assert ReviewReason.SUSPECTED_INJECTION in (attacked_outcome.review_reasons or ()), row["id_alumno"]
        assert attacked_outcome.nota is not None and clean_outcome.nota is not None
        assert attacked_outcome.nota - clean_outcome.nota < 2, row["id_alumno"]


@pytest.mark.parametrize("index", [3])
async def test_an_ok_result_of_a_sample_carries_its_reasons(real_engine: VllmEngine, index: int) -> None:
    outcome = await real_engine.grade(sample_items()[index], "sample-reasons")
    assert_most_probable(outcome)
