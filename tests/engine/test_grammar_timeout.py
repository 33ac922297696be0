"""vLLM's regex compilation timeout is set on purpose (consumer/engine/vllm_compat.py), an operator's value kept."""

from __future__ import annotations

import os

import pytest

from consumer.engine import vllm_compat


def test_the_timeout_is_set_before_the_engine_starts_and_an_operator_value_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VLLM_REGEX_COMPILATION_TIMEOUT_S", raising=False)
    vllm_compat.configure_grammar_timeout()

    assert os.environ["VLLM_REGEX_COMPILATION_TIMEOUT_S"] == str(vllm_compat.REGEX_COMPILATION_TIMEOUT_S)
    # Far above what the warm-up takes on a loaded machine (54 s at a load of
    # 7 on 2 cores, 193 s at 13), far below "never".
    assert 60 <= vllm_compat.REGEX_COMPILATION_TIMEOUT_S <= 600
    monkeypatch.setenv("VLLM_REGEX_COMPILATION_TIMEOUT_S", "42")
    vllm_compat.configure_grammar_timeout()
    assert os.environ["VLLM_REGEX_COMPILATION_TIMEOUT_S"] == "42"
