"""The seed's GPU memory budget as arithmetic (consumer/gpu_budget.py), and the
GPU's size read through NVML without a CUDA context in the consumer process."""

from __future__ import annotations

import re
from typing import Any

import pytest

from consumer import gpu_budget
from consumer.engine import factory, gpu_memory
from consumer.engine.gpu_memory import GpuMemory, read_gpu_memory
from consumer.gpu_budget import (
    GB,
    GEMMA2_9B_BF16,
    GEMMA2_9B_FP8,
    L40_TOTAL_BYTES,
    SEED_LIMIT_GB,
    kv_cache_bytes,
    max_num_seqs_for,
    peak_bytes,
    texts_in_flight,
    vllm_fraction,
)
from consumer.settings import Settings
from tests.doubles import FakeNvml
from tests.helpers import REPO


def test_the_default_budget_keeps_an_l40_under_the_seeds_22_gb() -> None:
    # An L40: 46,068 MiB = 48.31 GB. The service may show 21.5 GB; 0.5 of it is
    # the engine's CUDA context, outside vLLM's share: (21.5 - 0.5) / 48.31 = 0.4347 -> 0.434.
    assert L40_TOTAL_BYTES == 48_305_799_168
    fraction = vllm_fraction(gpu_budget.DEFAULT_BUDGET_GB, L40_TOTAL_BYTES)
    assert fraction == 0.434
    assert round(fraction * L40_TOTAL_BYTES / GB, 2) == 20.96  # vLLM's share
    assert peak_bytes(fraction, L40_TOTAL_BYTES) < SEED_LIMIT_GB * GB  # 21.46 GB < 22 GB
    # GiB would not do: a "22 GiB" budget is 23.6 GB.
    assert round(22 * 2**30 / GB, 1) == 23.6 > SEED_LIMIT_GB


def test_the_kv_cache_left_sets_max_num_seqs() -> None:
    fraction = vllm_fraction(gpu_budget.DEFAULT_BUDGET_GB, L40_TOTAL_BYTES)
    # bf16: 20.96 - 18.48 (weights) - 1.0 (activations, CUDA graphs) = 1.48 GB of KV.
    kv = kv_cache_bytes(fraction, L40_TOTAL_BYTES, GEMMA2_9B_BF16)
    assert round(kv / GB, 2) == 1.48
    assert kv // GEMMA2_9B_BF16.kv_bytes_per_token == 4_315  # tokens, 344,064 bytes each
    assert texts_in_flight(kv, GEMMA2_9B_BF16) == 17  # (4,315 - 144 shared) // 240 per text
    assert max_num_seqs_for(kv, GEMMA2_9B_BF16) == gpu_budget.GPU_MAX_NUM_SEQS_BF16 == 16  # whole CUDA-graph steps
    # vLLM refuses to start if one MAX_MODEL_LEN sequence does not fit: 2,048 tokens = 0.70 GB.
    assert kv > Settings(_env_file=None).engine.max_model_len * GEMMA2_9B_BF16.kv_bytes_per_token  # type: ignore[call-arg]
    # FP8 weights free 8.3 GB: 9.80 GB of KV, 118 texts, 112.
    kv8 = kv_cache_bytes(fraction, L40_TOTAL_BYTES, GEMMA2_9B_FP8)
    assert round((GEMMA2_9B_BF16.weights_bytes - GEMMA2_9B_FP8.weights_bytes) / GB, 2) == 8.32
    assert texts_in_flight(kv8, GEMMA2_9B_FP8) == 118
    assert max_num_seqs_for(kv8, GEMMA2_9B_FP8) == gpu_budget.GPU_MAX_NUM_SEQS_FP8 == 112
    # The written constants are the arithmetic's.
    assert gpu_budget.default_max_num_seqs(GEMMA2_9B_BF16) == gpu_budget.GPU_MAX_NUM_SEQS_BF16
    assert gpu_budget.default_max_num_seqs(GEMMA2_9B_FP8) == gpu_budget.GPU_MAX_NUM_SEQS_FP8


def test_the_arithmetic_refuses_what_cannot_be() -> None:
    assert max_num_seqs_for(0, GEMMA2_9B_BF16) == 1 and max_num_seqs_for(-5, GEMMA2_9B_BF16) == 1
    assert max_num_seqs_for(7 * 240 * 344_064 + 144 * 344_064, GEMMA2_9B_BF16) == 7  # below one step: as is
    with pytest.raises(ValueError, match="more than the GPU"):
        vllm_fraction(60, L40_TOTAL_BYTES)
    with pytest.raises(ValueError, match="leaves nothing"):
        vllm_fraction(0.5, L40_TOTAL_BYTES)


def test_the_settings_reference_shows_the_arithmetics_numbers() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert "16 in bf16, 112 with QUANTIZATION=fp8" in doc
    source = (REPO / "consumer" / "gpu_budget.py").read_text(encoding="utf-8")
    assert "4,315 tokens -> (4,315 - 144) / 240 = 17 texts -> 16" in source


def test_nvml_gives_the_card_without_a_cuda_context(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def no_cuda(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the consumer process opened a CUDA context")

    for name in ("init", "_lazy_init", "mem_get_info", "is_available", "device_count", "set_device"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    nvml = FakeNvml(total_bytes=L40_TOTAL_BYTES, used_bytes=21_000_000_000)
    assert read_gpu_memory(nvml) == GpuMemory("NVIDIA L40", L40_TOTAL_BYTES, 21_000_000_000)
    assert nvml.calls == ["init", "handle 0", "shutdown"]  # NVML released after each read
    monkeypatch.setattr(gpu_memory, "_vllm_nvml", lambda: nvml)
    assert factory.gpu_total_bytes() == L40_TOTAL_BYTES
    args = factory.engine_args(
        Settings(_env_file=None),
        factory.resolve_model(Settings(_env_file=None), "cuda"),
        "cuda",
        factory.gpu_total_bytes(),
    )  # type: ignore[call-arg]
    assert args["gpu_memory_utilization"] == 0.434
    from consumer.engine.vllm_engine import _gpu_memory_gb

    assert _gpu_memory_gb("cuda") == {"gpu_memory_total_gb": L40_TOTAL_BYTES / 1e9, "gpu_memory_used_gb": 21.0}
    assert _gpu_memory_gb("cpu") == {}
    monkeypatch.undo()
    assert not torch.cuda.is_initialized()


def test_the_visible_device_is_the_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml(total_bytes=L40_TOTAL_BYTES)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    read_gpu_memory(nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2c")
    read_gpu_memory(nvml)
    assert [c for c in nvml.calls if c.startswith("handle")] == ["handle 3", "handle GPU-8f2c"]


def test_without_a_driver_there_is_no_gpu_and_no_context() -> None:
    import torch

    assert read_gpu_memory() is None  # vLLM's NVML copy: no libnvidia-ml here
    assert factory.gpu_total_bytes() is None
    assert not torch.cuda.is_initialized()


def test_nothing_in_the_consumer_asks_cuda_for_memory() -> None:
    # torch.cuda calls open a context (mem_get_info, device properties): NVML instead.
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sorted((REPO / "consumer").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\btorch\.cuda\.", line)
    ]
    assert offenders == []
