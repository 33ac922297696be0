"""Model output validation: anything but a clean grade is invalid_output, never a nota."""

from __future__ import annotations

import json
import re

import pytest

from consumer.contract import ErrorCode
from consumer.engine.output import (
    FEEDBACK_CHARS,
    FEEDBACK_FIRST_CHARS,
    Generation,
    OutputError,
    ParsedGrade,
    continuation_regex,
    feedback_pattern,
    output_regex,
    output_schema,
    parse_generation,
    pattern_max_chars,
)
from consumer.settings import JSON_OVERHEAD_TOKENS, WORST_TOKENS_PER_FEEDBACK_CHAR, Settings, max_tokens_for


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
    assert schema["properties"]["feedback"]["pattern"] == feedback_pattern(176)
    assert schema["properties"]["nota"]["enum"] == [0, 1, 2, 3, 4, 5]
    assert schema["additionalProperties"] is False
    assert pattern_max_chars(output_regex(176)) == 176


@pytest.mark.parametrize(
    ("feedback", "allowed"),
    [
        ("Bon treball: l'alumne explica bé la fotosíntesi; revisa la ç i la l·l.", True),
        ("«Correcte» — no", False),  # the em dash is 3 bytes of UTF-8
        ("Molt bé!", True),
        ('Diu "hola"', False),  # a quote would be an escape
        ("a\\b", False),
        ("línia\nnova", False),  # control characters need escapes
        ("tab\tx", False),
        ("emoji 😀", False),
        ("l’alumne", False),  # typographic apostrophe: 3 bytes
        (" comença amb espai", False),
        ("x", True),
        ("Ω ж ß ñ", False),  # a feedback starts with a Latin letter (the first-letter rule)
        ("ß ñ Ω ж", True),
        ("...", False),  # the instruction's placeholder, which the CPU stand-in copied
        (". . .", False),
        ("-", False),
        ("1r: bé", False),
        ("¿Per què no hi ha conclusió?", True),
        ("Èxit parcial", True),
        ("àmbit correcte", True),
    ],
)
def test_feedback_pattern_allows_only_unescaped_two_byte_characters(feedback: str, allowed: bool) -> None:
    pattern = re.compile(feedback_pattern(176))
    assert bool(pattern.fullmatch(feedback)) is allowed


def test_every_allowed_character_costs_at_most_the_budgeted_tokens() -> None:
    # A grammar-accepted token is at least one byte, so a character costs at
    # most its UTF-8 length in tokens; the budget assumes the worst of them.
    allowed = re.compile(f"[{FEEDBACK_CHARS}]")
    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    worst = max(len(c.encode("utf-8")) for c in chars if allowed.fullmatch(c))
    assert worst == WORST_TOKENS_PER_FEEDBACK_CHAR
    assert not any(allowed.fullmatch(c) for c in '"\\\x7f\x85\xa0') and not any(
        allowed.fullmatch(chr(c)) for c in range(32)
    )


def test_first_letter_rule_keeps_the_budget() -> None:
    # Every first character is also a feedback character (at most 2 bytes,
    # no escape): the first-letter rule narrows the output, never lengthens it.
    first = re.compile(f"[{FEEDBACK_FIRST_CHARS}]")
    allowed = re.compile(f"[{FEEDBACK_CHARS}]")
    firsts = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and first.fullmatch(chr(cp))]
    assert all(allowed.fullmatch(c) for c in firsts)
    assert {"A", "z", "à", "ç", "É", "ñ", "¿", "¡"} <= set(firsts)
    assert not {".", " ", "1", "×", "÷", '"'} & set(firsts)


def test_the_continuation_is_the_rest_of_the_output_grammar() -> None:
    # A forced grade's continuation (VllmEngine.continue_with) writes exactly
    # what the first generation would have after its grade digit.
    for chars in (20, 176):
        assert output_regex(chars) == '\\{"nota": [0-5]' + continuation_regex(chars)


def _vllm_grammar(feedback_chars: int) -> object:
    # What vLLM's xgrammar backend compiles for StructuredOutputsParams(regex=...).
    import xgrammar

    return xgrammar.Grammar.from_regex(output_regex(feedback_chars))


@pytest.mark.parametrize("feedback_chars", [20, 176])
def test_the_longest_output_the_grammar_accepts_closes_inside_max_tokens(feedback_chars: int) -> None:
    from xgrammar.testing import _is_grammar_accept_string

    grammar = _vllm_grammar(feedback_chars)
    max_tokens = max_tokens_for(feedback_chars)
    longest = '{"nota": 5, "feedback": "' + "à" * feedback_chars + '"}'
    assert _is_grammar_accept_string(grammar, longest)
    assert json.loads(longest)["nota"] == 5
    # Its bytes, plus the end-of-sequence token, are exactly the budget.
    assert len(longest.encode("utf-8")) + 1 == max_tokens
    assert len(longest.encode("utf-8")) + 1 == JSON_OVERHEAD_TOKENS + WORST_TOKENS_PER_FEEDBACK_CHAR * feedback_chars
    # Nothing longer or looser gets through: one more character, other
    # whitespace, an escape, another key order.
    for longer in (
        '{"nota": 5, "feedback": "' + "à" * (feedback_chars + 1) + '"}',
        '{"nota":5,"feedback":"ok"}',
        '{"nota": 5,  "feedback": "ok"}',
        '{"nota": 5, "feedback": "o\\u00e0"}',
        '{"nota": 5, "feedback": "ok"} ',
        '{"nota": 6, "feedback": "ok"}',
        '{"feedback": "ok", "nota": 5}',
        '{"nota": 5, "feedback": "..."}',  # the instruction's placeholder
        '{"nota": 5, "feedback": ". Bé"}',
    ):
        assert not _is_grammar_accept_string(grammar, longer), longer


def test_the_placeholder_is_not_an_output_of_either_grammar() -> None:
    import xgrammar
    from xgrammar.testing import _is_grammar_accept_string

    rest = xgrammar.Grammar.from_regex(continuation_regex(176))
    assert _is_grammar_accept_string(rest, ', "feedback": "Bon treball."}')
    assert not _is_grammar_accept_string(rest, ', "feedback": "..."}')
    assert _is_grammar_accept_string(_vllm_grammar(176), '{"nota": 1, "feedback": "Bon treball."}')
    assert not _is_grammar_accept_string(_vllm_grammar(176), '{"nota": 1, "feedback": "..."}')


def test_settings_budget_matches_the_grammar() -> None:
    assert Settings(_env_file=None).engine.max_tokens == max_tokens_for(Settings(_env_file=None).engine.feedback_chars)  # type: ignore[call-arg]


def test_every_token_of_the_default_model_is_at_least_one_byte() -> None:
    # The other half of the budget: tokens <= UTF-8 bytes holds when no token
    # the grammar can accept decodes to nothing (xgrammar's view of the vocabulary).
    import xgrammar
    from transformers import AutoTokenizer

    from consumer.engine.model_store import GEMMA3_270M, prepare_small_model

    path = prepare_small_model(Settings(_env_file=None).engine.model_cache_dir, GEMMA3_270M)  # type: ignore[call-arg]
    info = xgrammar.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(path))
    special = set(info.special_token_ids)
    assert len(info.decoded_vocab) == 262_144
    assert all(len(piece) >= 1 for i, piece in enumerate(info.decoded_vocab) if i not in special)
