"""VllmEngine.start builds the prompt format from the tokenizer vLLM loaded; a failed half stops the other.

vLLM's side is a stand-in here (no model): what is checked is which
tokenizer the prompt format gets and the clean-up, which the real engine's
tests cannot make fail.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from consumer.contract import Sampling
from consumer.engine import vllm_compat
from consumer.engine.vllm_engine import EngineOptions, VllmEngine

OPTIONS = EngineOptions(
    model_name="stub", sampling=Sampling(temperature=0.1, top_p=1.0, max_tokens=64, seed=0), feedback_max_chars=40,
    attempts=1, device="cpu", timeout_s=None, review_below=None, tie_margin=0.0, screener=None, prompt_format="",
    model_revision=None, calibration=None,
)  # fmt: skip


class _StubLLM:
    """What vllm_compat.shut_down touches of an AsyncLLM."""

    output_handler = None

    def __init__(self) -> None:
        self.shut_down = threading.Event()

    def shutdown(self, timeout: float | None = None) -> None:
        self.shut_down.set()


def _stub_vllm(monkeypatch: pytest.MonkeyPatch, stub: _StubLLM, tokenizer: object) -> None:
    from vllm.v1.engine.async_llm import AsyncLLM

    monkeypatch.setattr(AsyncLLM, "from_engine_args", staticmethod(lambda args: stub))
    monkeypatch.setattr(vllm_compat, "loaded_tokenizer", lambda llm: tokenizer if llm is stub else None)


async def _start(prompt_parts: Any) -> VllmEngine:
    return await VllmEngine.start(
        engine_args={"model": "stub", "max_model_len": 512},
        prompt_parts=prompt_parts,
        warm_up=False,
        **OPTIONS,
    )


async def test_the_prompt_format_gets_the_tokenizer_vllm_loaded_not_a_second_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub, vllms = _StubLLM(), object()
    _stub_vllm(monkeypatch, stub, vllms)
    given: list[object] = []

    class Seen(Exception):
        pass

    def parts(loaded: object) -> Any:
        given.append(loaded)
        raise Seen  # a stub tokenizer would not build an engine; what it was given is the point

    with pytest.raises(Seen):
        await _start(parts)
    assert given == [vllms]


async def test_a_tokenizer_that_cannot_work_fails_the_start_and_the_started_engine_is_shut_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub = _StubLLM()
    _stub_vllm(monkeypatch, stub, object())

    def no_bos(loaded: object) -> Any:
        raise ValueError("the gemma_finetune format starts with <bos>, and this tokenizer has no BOS token")

    with pytest.raises(ValueError, match="no BOS token"):
        await _start(no_bos)
    assert stub.shut_down.is_set()  # no engine process left behind


async def test_an_engine_that_fails_to_start_fails_the_start_with_its_own_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vllm.v1.engine.async_llm import AsyncLLM

    def fails(args: object) -> None:
        raise RuntimeError("Engine core initialization failed")

    monkeypatch.setattr(AsyncLLM, "from_engine_args", staticmethod(fails))
    with pytest.raises(RuntimeError, match="Engine core initialization failed"):
        await VllmEngine.start(
            engine_args={"model": "stub", "max_model_len": 512},
            prompt_parts=lambda loaded: (object(), object()),  # type: ignore[arg-type,return-value]
            warm_up=False,
            **OPTIONS,
        )
