"""How sure the model is of a grade (contract 1.2): its distribution over 0..5 at the grade position.

What vLLM 0.32 gives (read in its source, ``v1/worker/gpu_model_runner.py``
and ``v1/sample/sampler.py``; the CPU runner inherits both): the grammar's
bitmask is applied to the logits *before* the sampler, and
``logprobs_mode="raw_logprobs"`` (vLLM's default) is the log-softmax of those
logits before temperature, top-p or penalties. So at the grade position, where
the grammar allows only the digits 0..5, the log-probabilities are the model's
own next-token distribution (temperature 1) restricted to the tokens the
grammar allows there and renormalised over them. ``SamplingParams.logprob_token_ids``
asks for exactly the digit tokens at every position (no top-k sort).

The engine runs with ``logprobs_mode="raw_logits"`` (factory.engine_args):
the same logits before any processing, without the log-softmax. A log-softmax
only subtracts one constant per position, which renormalising over the digits
cancels, so the distribution is the same; what is saved is a pass over the
whole vocabulary (262k on Gemma) per sequence per step, which the sampler pays
for the batch as soon as one sequence asks for log-probabilities. Whatever the
mode, the values are read as log-weights: shifted by their maximum before
``exp``, so a logit of 80 cannot overflow.

On the Gemma tokenizer a digit has two tokens: its own ("3", id 236800) and
the byte-fallback one ("<0x33>", id 289); a grade's probability is the sum of
both. Tokenizers whose pieces join a space and a digit (" 3", GPT-2 style)
are covered too: the alternatives are the tokens with the sampled one's prefix.

Measured with the CPU stand-in (Gemma 3 270M) on the 20 sample items: every
distribution sums to 1 within 1e-6, the grade given is the most probable one
in 20 of 20 (two of them tied in bf16), and the confidence is 0.27-0.55
(median 0.44): the stand-in grades nearly everything 1 and is unsure of it,
so REVIEW_CONFIDENCE's default 0.5 (the grade is less likely than all the
others together) flags 18 of 20. Those figures say nothing about the
production model's; the threshold is a setting because its right value
depends on the model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from consumer.engine.calibration import scaled

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

NOTA_VALUES = (0, 1, 2, 3, 4, 5)  # the grades (consumer/engine/output.py's grammar allows these)
# What may precede the digit inside one token, in the fine-tune's layout `"nota": 3`.
_DIGIT_PREFIXES = ("", " ")
PROBABILITY_DECIMALS = 6  # a sum of six rounded values stays within 3e-6 of 1


@dataclass(frozen=True, slots=True)
class GradeDistribution:
    """The distribution read at the grade position, and the grade sampled there."""

    grade: int
    probabilities: tuple[float, ...]  # six values for 0..5, summing to 1
    position: int = 0  # of the grade token in the output
    prefix: str = ""  # what precedes the digit inside that token (see GradeDigits)


@dataclass(frozen=True, slots=True)
class GradeConfidence:
    """The 1.2 fields of one ok result (``needs_review``: 1.3, any review reason at all)."""

    probabilities: tuple[float, ...]  # calibrated when a calibration applies (engine/calibration.py)
    confidence: float
    needs_review: bool
    # The model's own distribution when ``probabilities`` is calibrated (the decision
    # record keeps it), and the temperature applied; None: not calibrated.
    raw_probabilities: tuple[float, ...] | None = None
    temperature: float | None = None

    @classmethod
    def of(
        cls, nota: int, probabilities: Sequence[float], review_below: float, *, temperature: float | None = None
    ) -> GradeConfidence:
        """``temperature``: the distribution is shown calibrated by it (``raw_probabilities`` the given one)."""
        raw = tuple(round(p, PROBABILITY_DECIMALS) for p in probabilities)
        rounded = (
            raw
            if temperature is None
            else tuple(round(p, PROBABILITY_DECIMALS) for p in scaled(probabilities, temperature))
        )
        confidence = rounded[nota]
        return cls(
            probabilities=rounded,
            confidence=confidence,
            needs_review=confidence < review_below,
            raw_probabilities=None if temperature is None else raw,
            temperature=temperature,
        )

    def with_review(self, needs_review: bool) -> GradeConfidence:
        return GradeConfidence(
            self.probabilities, self.confidence, needs_review, self.raw_probabilities, self.temperature
        )


def most_probable(probabilities: Sequence[float], prefer: int | None = None) -> int:
    """The grade with the most probability (contract 1.3: the ``nota`` given).

    An exact tie goes to ``prefer`` (the grade the generation wrote) when it
    is one of the tied, else to the lowest: a rule, so the same numbers give
    the same grade. Ties within ``TIE_MARGIN`` are said (``near_tie``).
    """
    top = max(probabilities)
    if prefer is not None and probabilities[prefer] == top:
        return prefer
    return next(g for g, p in enumerate(probabilities) if p == top)


def top_two_gap(probabilities: Sequence[float]) -> float:
    """How far the most probable grade is ahead of the next one."""
    first, second = sorted(probabilities, reverse=True)[:2]
    return first - second


@dataclass(frozen=True, slots=True)
class GradeDigits:
    """The token ids that spell each grade on one tokenizer, grouped by what precedes the digit in the token."""

    by_prefix: Mapping[str, Mapping[int, int]]  # prefix -> {token id: grade}
    # prefix -> {grade: the token that spells it}: the piece itself ("3"), not its byte-fallback twin
    spelled: Mapping[str, Mapping[int, int]] = field(default_factory=dict)

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> GradeDigits:
        found: dict[str, dict[int, int]] = {}
        spelled: dict[str, dict[int, int]] = {}
        for piece, token_id in tokenizer.get_vocab().items():
            # Cheap filter first: decoding all 262k Gemma pieces would take seconds.
            if len(piece) > 8 or not any(d in piece for d in "012345"):
                continue
            text = str(tokenizer.decode([token_id]))
            for prefix in _DIGIT_PREFIXES:
                digit = text[len(prefix) :]
                if text.startswith(prefix) and len(digit) == 1 and digit in "012345":
                    found.setdefault(prefix, {})[token_id] = int(digit)
                    if piece.replace("\u2581", " ").replace("\u0120", " ") == text:
                        spelled.setdefault(prefix, {})[int(digit)] = token_id
        for prefix, ids in found.items():  # a tokenizer whose digits are all byte pieces: the lowest id
            for token_id, grade in sorted(ids.items()):
                spelled.setdefault(prefix, {}).setdefault(grade, token_id)
        digits = cls(by_prefix=found, spelled=spelled)
        if not any(set(ids.values()) == set(NOTA_VALUES) for ids in found.values()):
            raise ValueError("the tokenizer has no token for each of the digits 0..5")
        return digits

    @property
    def token_ids(self) -> list[int]:
        """Every digit token, for ``SamplingParams.logprob_token_ids``."""
        return sorted(t for ids in self.by_prefix.values() for t in ids)

    def token_for(self, prefix: str, grade: int) -> int:
        """The token that writes ``grade`` where a token with ``prefix`` was (a forced grade)."""
        return self.spelled[prefix][grade]

    def grade_of(self, token_id: int) -> tuple[str, int] | None:
        for prefix, ids in self.by_prefix.items():
            if token_id in ids:
                return prefix, ids[token_id]
        return None


def grade_distribution(
    token_ids: Sequence[int], log_weights_at: Callable[[int], Mapping[int, float]], digits: GradeDigits
) -> GradeDistribution | None:
    """The distribution at the first digit token of the output, or None if there is none to read.

    The output starts with `{"nota": ` (no digit), so its first digit token is
    the grade. ``log_weights_at(position)``: log-probabilities or logits of the
    digit tokens there (any constant offset cancels).
    """
    for position, token_id in enumerate(token_ids):
        spelled = digits.grade_of(token_id)
        if spelled is None:
            continue
        prefix, grade = spelled
        weights = log_weights_at(position)
        found = [
            (value, candidate_grade)
            for candidate, candidate_grade in digits.by_prefix[prefix].items()
            if (value := weights.get(candidate)) is not None and not math.isnan(value) and value != -math.inf
        ]
        if not found:
            return None
        top = max(value for value, _ in found)
        mass = [0.0] * len(NOTA_VALUES)
        for value, candidate_grade in found:
            mass[candidate_grade] += math.exp(value - top)
        total = sum(mass)
        if not math.isfinite(total):  # a +inf weight (the top one counts 1, so total >= 1 otherwise)
            return None
        probabilities = tuple(m / total for m in mass)
        return GradeDistribution(grade=grade, probabilities=probabilities, position=position, prefix=prefix)
    return None


def fake_distribution(nota: int, seed_text: str) -> tuple[float, ...]:
    """A plausible, deterministic distribution peaked at ``nota`` (the fake engine's).

    Confidence between 0.45 and 0.98 from the text's hash, the rest decaying
    with the distance from the grade, as a real grader's mass does (the grade
    stays the most probable: a neighbour gets at most 0.68 of the rest).
    """
    digest = hashlib.sha256(seed_text.encode("utf-8")).digest()
    confidence = 0.45 + 0.53 * digest[1] / 255
    weights = [0.0 if g == nota else 0.5 ** abs(g - nota) * (1 + digest[2 + g] / 255) for g in NOTA_VALUES]
    rest = sum(weights)
    return tuple(confidence if g == nota else (1 - confidence) * w / rest for g, w in enumerate(weights))
