"""The real engine (the session's): warm before it is ready, and each grade with the model's distribution.

Issue 19.5: the first request after a start once met vLLM's 5 s grammar
compilation timeout and was saved only by a retry. Issue 22.1 / contract 1.2:
every ok result carries ``nota_probabilities``, ``confidence``, ``needs_review``.
The same first-request check on a loaded machine: ``bench/warm_start.py --hogs 2``.
"""

from __future__ import annotations

import os

from consumer.contract import EvaluationResult, ItemStatus
from consumer.engine import vllm_compat
from consumer.engine.vllm_engine import VllmEngine
from consumer.settings import Settings
from tests.helpers import sample_items


async def test_the_grammar_is_compiled_before_the_engine_is_handed_out_and_the_first_request_is_clean(
    real_engine: VllmEngine,
) -> None:
    # build_engine returned only after its warm-up generation (the first
    # request vLLM ever saw from this engine) ended cleanly: a grammar that
    # times out ends a request with "error", which the warm-up refuses.
    warmed = real_engine.stats()
    assert warmed.warm_up_s is not None
    assert os.environ["VLLM_REGEX_COMPILATION_TIMEOUT_S"] == str(vllm_compat.REGEX_COMPILATION_TIMEOUT_S)
    outcome = await real_engine.grade(sample_items()[0], "first-after-warm-up")
    after = real_engine.stats()
    assert outcome.status is ItemStatus.OK and outcome.attempts == 1
    assert after.generations == warmed.generations + 1
    # Since the start, warm-up included: no generation ended in a vLLM error
    # (a failed grammar compilation is one), so nothing was retried for it.
    assert after.errored_generations == 0


async def test_every_ok_result_carries_a_distribution_that_agrees_with_its_grade(
    graded_samples: list[EvaluationResult], engine_settings: Settings
) -> None:
    items, results = sample_items(), graded_samples
    ok = [r for r in results if r.status is ItemStatus.OK]
    assert len(ok) == len(items), [r.error for r in results]
    argmax_hits = 0
    for result in ok:
        probabilities, nota = result.nota_probabilities, result.nota
        assert probabilities is not None and nota is not None and result.confidence is not None
        assert len(probabilities) == 6 and abs(sum(probabilities) - 1) <= 1e-3
        assert result.confidence == probabilities[nota]
        assert result.needs_review is (result.confidence < engine_settings.engine.review_confidence)
        argmax_hits += max(probabilities) == probabilities[nota]
    # Sampling is at temperature 0.1 over a distribution read at temperature 1:
    # the grade given is the most probable one nearly always.
    assert argmax_hits >= 0.95 * len(ok), (argmax_hits, len(ok))


async def test_error_results_carry_no_distribution(real_engine: VllmEngine) -> None:
    long_item = sample_items()[0].model_copy(update={"respuesta": "paraula " * 5000})
    outcome = await real_engine.grade(long_item, "long-conf")
    assert outcome.status is ItemStatus.ERROR and outcome.grade_confidence is None


async def test_texts_are_decoded_once_at_the_end_exactly_as_vllms_detokenizer_gives_them(
    real_engine: VllmEngine,
) -> None:
    assert real_engine.params(0).detokenize is False  # no step-by-step detokenizing in vLLM
    _, token_ids = real_engine.encode(sample_items()[1])
    detokenized = real_engine.params(0).clone()
    detokenized.detokenize = True
    completion = (await real_engine.generate(token_ids, 0, "detokenized", detokenized)).outputs[0]
    assert completion.finish_reason == "stop" and completion.text.startswith('{"nota": ')
    assert real_engine.text(completion) == completion.text
