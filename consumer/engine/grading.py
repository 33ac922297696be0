"""The per-item flow both engines share: length check, generate, validate, choose the grade, retry.

Keeping it in one place means the fake engine exercises exactly the failure
handling the real one uses.

The grade given is the model's most probable one (contract 1.3), never a
sampled second choice: the first generation writes a grade and its feedback
and gives the distribution over 0..5 at the grade position; when the grade
it wrote is not the most probable, the generation is continued from the
grade position with the most probable grade in its place (``forced``), so
the feedback is written for the grade given. Its distribution is the one
reported, so ``nota`` is its argmax by construction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from consumer.contract import ErrorCode, ReviewReason, ordered_reasons
from consumer.engine.base import GradeOutcome
from consumer.engine.calibration import Calibration
from consumer.engine.confidence import GradeConfidence, GradeDistribution, most_probable, top_two_gap
from consumer.engine.output import Generation, OutputError, ParsedGrade, parse_generation
from consumer.engine.prompt import Prompt

# (attempt, forced grade or None) -> a generation. With a forced grade the
# engine continues the attempt's own output from the grade position, with
# that grade written there (and reads no distribution: the grade is given).
Generate = Callable[[int, int | None], Awaitable[Generation]]


async def grade_prompt(
    prompt: Prompt,
    prompt_tokens: int,
    max_prompt_tokens: int,
    generate: Generate,
    attempts: int,
    *,
    tie_margin: float,
    timeout_s: float | None = None,
    review_below: float | None = None,
    require_distribution: bool = False,
    answer_reasons: Sequence[ReviewReason] | None = None,
    calibration: Calibration | None = None,
) -> GradeOutcome:
    """Grade one prompt; every failure becomes a typed outcome (cancellation still propagates).

    ``timeout_s`` bounds the whole item, retries included: a hung engine
    turns into ``engine_timeout`` results instead of a job that never ends.
    With ``review_below`` set, an ok outcome carries the grade's confidence
    (contract 1.2) when the generation has its distribution, and the grade
    is its most probable one; with ``require_distribution`` too, a
    generation without one is not a grade. ``answer_reasons``: what the
    screening read in the answer (None: not screened); the outcome's review
    reasons add ``low_confidence`` and ``near_tie`` (within ``tie_margin``).
    ``calibration``: the temperature fitted for this model and prompt format
    (CALIBRATION_FILE); the outcome's distribution is the calibrated one.
    """
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return (time.perf_counter() - started) * 1000.0

    if prompt_tokens > max_prompt_tokens:
        # Without calling the model: vLLM would cut the output short or reject it.
        return GradeOutcome.failed(
            ErrorCode.INPUT_TOO_LONG,
            f"prompt is {prompt_tokens} tokens; at most {max_prompt_tokens} fit (MAX_MODEL_LEN minus MAX_TOKENS)",
            prompt_sha256=prompt.sha256,
            latency_ms=elapsed_ms(),
        )
    verdict: ParsedGrade | OutputError = OutputError(ErrorCode.INVALID_OUTPUT, "no attempt made")
    distribution: GradeDistribution | None = None  # the first one read: the grade's
    forced: int | None = None
    tokens = cached = generations = used = 0

    async def attempt_once(attempt: int) -> ParsedGrade | OutputError | _Rewrite:
        nonlocal distribution, tokens, cached, generations
        generation = await generate(attempt, forced)
        generations += 1
        tokens += generation.output_tokens
        cached += generation.cached_prompt_tokens
        parsed = parse_generation(generation)
        if review_below is None:
            return parsed
        if forced is None and distribution is None:
            distribution = generation.distribution
        return _checked(parsed, generation, distribution, forced, require_distribution)

    try:
        async with asyncio.timeout(timeout_s):
            for attempt in range(attempts):
                used = attempt + 1
                # The attempt number lets the engine move to the next seed: with
                # a fixed seed a plain retry would repeat the same output.
                checked = await attempt_once(attempt)
                if isinstance(checked, _Rewrite):
                    # Valid, but not the most probable grade: the same attempt,
                    # continued from the grade position with that grade.
                    forced = checked.grade
                    checked = await attempt_once(attempt)
                if isinstance(checked, _Rewrite):  # cannot happen with a grade forced; never a grade
                    checked = OutputError(ErrorCode.INVALID_OUTPUT, "the continuation did not keep the grade given")
                verdict = checked
                if isinstance(verdict, ParsedGrade):
                    break
                if distribution is not None and review_below is not None:
                    # The retry writes the most probable grade the model already gave.
                    forced = most_probable(distribution.probabilities, prefer=distribution.grade)
    except TimeoutError:
        verdict = OutputError(ErrorCode.ENGINE_TIMEOUT, f"no valid output within {timeout_s} s (ENGINE_TIMEOUT_S)")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any engine failure is an outcome
        # Type and a bounded message: engine errors carry ids and sizes, not text.
        verdict = OutputError(ErrorCode.ENGINE_ERROR, f"{type(exc).__name__}: {str(exc)[:200]}")
    common = {
        "prompt_sha256": prompt.sha256,
        "latency_ms": elapsed_ms(),
        "output_tokens": tokens,
        "attempts": used,
        "prompt_tokens": prompt_tokens * max(generations, used),
        "cached_prompt_tokens": cached,
    }
    if isinstance(verdict, ParsedGrade):
        reasons: set[ReviewReason] | None = None if answer_reasons is None else set(answer_reasons)
        confidence: GradeConfidence | None = None
        if review_below is not None and distribution is not None:
            reasons = reasons or set()
            # Calibrated (temperature keeps the order, so ``nota`` stays the argmax): the
            # confidence, its threshold and the tie margin all read the calibrated values.
            temperature = calibration.temperature if calibration is not None else None
            confidence = GradeConfidence.of(
                verdict.nota, distribution.probabilities, review_below, temperature=temperature
            )
            if confidence.confidence < review_below:
                reasons.add(ReviewReason.LOW_CONFIDENCE)
            shown = distribution.probabilities if calibration is None else calibration.apply(distribution.probabilities)
            if top_two_gap(shown) <= tie_margin:
                reasons.add(ReviewReason.NEAR_TIE)
            confidence = confidence.with_review(bool(reasons))
        ordered = None if reasons is None else tuple(ordered_reasons(reasons))
        return GradeOutcome.ok(
            verdict.nota, verdict.feedback, grade_confidence=confidence, review_reasons=ordered, **common
        )
    return GradeOutcome.failed(verdict.code, verdict.message, **common)


@dataclass(frozen=True, slots=True)
class _Rewrite:
    """A valid output whose grade is not the most probable: write it again with ``grade``."""

    grade: int


def _checked(
    verdict: ParsedGrade | OutputError,
    generation: Generation,
    distribution: GradeDistribution | None,
    forced: int | None,
    required: bool,
) -> ParsedGrade | OutputError | _Rewrite:
    """The verdict, held against the grade distribution."""
    if isinstance(verdict, OutputError):
        return verdict
    if distribution is None:
        if required:
            return OutputError(ErrorCode.INVALID_OUTPUT, "no grade distribution at the grade position")
        return verdict
    if forced is None and generation.distribution is not None and generation.distribution.grade != verdict.nota:
        # The grammar makes the first digit token the grade; a mismatch means the
        # position was misread, and a confidence of another token is no confidence.
        return OutputError(ErrorCode.INVALID_OUTPUT, "grade token does not match the grade in the output")
    best = most_probable(distribution.probabilities, prefer=distribution.grade)
    if verdict.nota == best:
        return verdict
    if forced is not None:
        return OutputError(ErrorCode.INVALID_OUTPUT, "the continuation did not keep the grade given")
    return _Rewrite(best)
