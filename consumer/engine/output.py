"""Model output -> grade, or the reason it is not one.

The grammar (``output_regex``) keeps vLLM's output in shape and short enough
to close inside ``max_tokens`` (the budget is explained beside
``JSON_OVERHEAD_TOKENS`` in ``consumer/settings.py``); this module still
checks everything, because a different backend or a cut-off generation can
produce anything. A failure here is an ``invalid_output`` error result:
never a made-up grade.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from consumer.contract import ErrorCode
from consumer.engine.confidence import NOTA_VALUES as NOTA_VALUES  # re-exported: defined beside their distribution
from consumer.engine.confidence import GradeDistribution

# Characters the feedback may hold: U+0020..U+07FF (at most 2 UTF-8 bytes
# each) without `"` and `\` (no JSON escapes: one character of value is one
# character of JSON) and without DEL, C1 controls and the no-break space.
# A regex character class, as JSON Schema's `pattern` takes it.
FEEDBACK_CHARS = " !#-\\[\\]-~\u00a1-\u07ff"
# The first character is a letter (Latin, with every Catalan and Spanish
# one, or the Spanish opening ¡ ¿): feedback starts with a word. The
# instruction's example is `"feedback": "..."`, and a weak model (the CPU
# stand-in) copies it; with a letter first, "..." (or any feedback of
# punctuation alone) is not an output the grammar lets through. Every
# character here is in FEEDBACK_CHARS, so the output budget is unchanged.
FEEDBACK_FIRST_CHARS = "A-Za-z\u00a1\u00bf\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff"
_PATTERN_RE = re.compile(r"\{0,(\d+)\}")


def feedback_pattern(max_chars: int) -> str:
    """A letter (``FEEDBACK_FIRST_CHARS``), then at most ``max_chars - 1`` allowed characters.

    The length lives in the pattern, not in ``maxLength``: xgrammar (vLLM's
    default backend) cannot combine the two and vLLM would silently switch
    backends.
    """
    return f"^[{FEEDBACK_FIRST_CHARS}][{FEEDBACK_CHARS}]{{0,{max_chars - 1}}}$"


def pattern_max_chars(grammar: str) -> int:
    """The feedback bound an ``output_regex`` was built with."""
    found = _PATTERN_RE.search(grammar)
    if found is None:
        raise ValueError("not a grammar from output_regex()")
    return int(found.group(1)) + 1


def output_regex(feedback_max_chars: int) -> str:
    """The grammar vLLM decodes with: the fine-tune's own JSON layout, fixed.

    `{"nota": N, "feedback": "…"}` with exactly the spaces of the training
    format (and of the instruction's example): a JSON Schema would give
    either compact JSON, which pushes the model off the layout it was trained
    on (measured on Gemma 3 270M: whole outputs of at most 16 tokens, where the
    spaced layout gave feedback sentences), or free whitespace, which a weak
    model pads until max_tokens. Every byte but the feedback is fixed.
    """
    body = feedback_pattern(feedback_max_chars)[1:-1]  # without ^ and $
    return '\\{"nota": [0-5], "feedback": "' + body + '"\\}'


def continuation_regex(feedback_max_chars: int) -> str:
    """The rest of ``output_regex`` after the grade digit (a forced grade's continuation)."""
    body = feedback_pattern(feedback_max_chars)[1:-1]
    return ', "feedback": "' + body + '"\\}'


def output_schema(feedback_max_chars: int) -> dict[str, Any]:
    """The same output as a JSON Schema, in the fine-tune's key order (for readers; vLLM gets the regex)."""
    return {
        "type": "object",
        "properties": {
            "nota": {"type": "integer", "enum": list(NOTA_VALUES)},
            "feedback": {"type": "string", "pattern": feedback_pattern(feedback_max_chars)},
        },
        "required": ["nota", "feedback"],
        "additionalProperties": False,
    }


@dataclass(frozen=True, slots=True)
class Generation:
    """One finished generation as the engine reports it."""

    text: str
    finish_reason: str | None  # "stop", "length", "abort", ...
    output_tokens: int
    cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache
    # The model's distribution at the grade position (consumer/engine/confidence.py), when read.
    distribution: GradeDistribution | None = None


@dataclass(frozen=True, slots=True)
class ParsedGrade:
    nota: int
    feedback: str


@dataclass(frozen=True, slots=True)
class OutputError:
    code: ErrorCode
    message: str  # no model text in here: it may quote the student


def parse_generation(generation: Generation) -> ParsedGrade | OutputError:
    if generation.finish_reason == "length":
        return OutputError(
            ErrorCode.INVALID_OUTPUT,
            f"output cut off at max_tokens ({generation.output_tokens} tokens)",
        )
    if generation.finish_reason not in ("stop", None):
        return OutputError(ErrorCode.INVALID_OUTPUT, f"generation ended: {generation.finish_reason}")
    try:
        data = json.loads(generation.text)
    except json.JSONDecodeError as exc:
        return OutputError(ErrorCode.INVALID_OUTPUT, f"output is not JSON ({exc.msg} at {exc.pos})")
    if not isinstance(data, dict):
        return OutputError(ErrorCode.INVALID_OUTPUT, "output is not a JSON object")
    nota, feedback = data.get("nota"), data.get("feedback")
    # bool is an int in Python; true is not a grade.
    if type(nota) is not int or nota not in NOTA_VALUES:
        return OutputError(ErrorCode.INVALID_OUTPUT, "nota missing or not an integer 0..5")
    if not isinstance(feedback, str) or not feedback.strip():
        return OutputError(ErrorCode.INVALID_OUTPUT, "feedback missing or empty")
    return ParsedGrade(nota=nota, feedback=feedback.strip())
