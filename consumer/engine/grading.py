"""The per-item flow both engines share: length check, generate, validate, retry.

Keeping it in one place means the fake engine exercises exactly the failure
handling the real one uses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from consumer.contract import ErrorCode
from consumer.engine.base import GradeOutcome
from consumer.engine.confidence import GradeConfidence
from consumer.engine.output import Generation, OutputError, ParsedGrade, parse_generation
from consumer.engine.prompt import Prompt

Generate = Callable[[int], Awaitable[Generation]]


async def grade_prompt(
    prompt: Prompt,
    prompt_tokens: int,
    max_prompt_tokens: int,
    generate: Generate,
    attempts: int,
    timeout_s: float | None = None,
    review_below: float | None = None,
    require_distribution: bool = False,
) -> GradeOutcome:
    """Grade one prompt; every failure becomes a typed outcome (cancellation still propagates).

    ``timeout_s`` bounds the whole item, retries included: a hung engine
    turns into ``engine_timeout`` results instead of a job that never ends.
    With ``review_below`` set, an ok outcome carries the grade's confidence
    (contract 1.2) when the generation has its distribution; with
    ``require_distribution`` too, a generation without one is not a grade.
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
    confidence: GradeConfidence | None = None
    tokens = used = cached = 0
    try:
        async with asyncio.timeout(timeout_s):
            for attempt in range(attempts):
                used = attempt + 1
                # The attempt number lets the engine move to the next seed: with
                # a fixed seed a plain retry would repeat the same output.
                generation = await generate(attempt)
                tokens += generation.output_tokens
                cached += generation.cached_prompt_tokens
                verdict = parse_generation(generation)
                if isinstance(verdict, ParsedGrade) and review_below is not None:
                    verdict, confidence = _with_confidence(verdict, generation, review_below, require_distribution)
                if isinstance(verdict, ParsedGrade):
                    break
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
        "prompt_tokens": prompt_tokens * used,
        "cached_prompt_tokens": cached,
    }
    if isinstance(verdict, ParsedGrade):
        return GradeOutcome.ok(verdict.nota, verdict.feedback, grade_confidence=confidence, **common)
    return GradeOutcome.failed(verdict.code, verdict.message, **common)


def _with_confidence(
    grade: ParsedGrade, generation: Generation, review_below: float, required: bool
) -> tuple[ParsedGrade | OutputError, GradeConfidence | None]:
    distribution = generation.distribution
    if distribution is None:
        if required:
            return OutputError(ErrorCode.INVALID_OUTPUT, "no grade distribution at the grade position"), None
        return grade, None
    # The grammar makes the first digit token the grade; a mismatch means the
    # position was misread, and a confidence of another token is no confidence.
    if distribution.grade != grade.nota:
        return OutputError(ErrorCode.INVALID_OUTPUT, "grade token does not match the grade in the output"), None
    return grade, GradeConfidence.of(grade.nota, distribution.probabilities, review_below)
