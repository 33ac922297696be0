"""The seed's GPU memory budget as arithmetic: what share of the card vLLM may
take, and how many texts the KV cache it leaves can hold.

Units: GB = 10⁹ bytes (the seed's "< 22 GB" is read literally: a GiB figure
of 22 would be 23.6 GB and miss it). A ``budget`` here is the whole GPU
footprint of the service, what ``nvidia-smi`` shows for it: vLLM's share
(``gpu_memory_utilization`` × the card) plus the CUDA context of vLLM's
engine process, which vLLM counts outside that share (its baseline memory
snapshot is taken after the context exists). The consumer process itself
opens no CUDA context (it reads the card through NVML).

The production model's figures and the overheads are estimates from the
model's shape and vLLM's profiler (docs/gpu.md); vLLM prints the real KV
cache size at start-up and ``texteval doctor --gpu`` measures the real peak.
Nothing here imports torch or vLLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GB = 10**9
# The seed: peak GPU memory of a 2,000-text job below this.
SEED_LIMIT_GB = 22.0
# GPU_MEMORY_BUDGET_GB's default: 0.5 GB under the seed's limit for what the
# estimates below miss (the real context size, allocations after vLLM's profile).
DEFAULT_BUDGET_GB = 21.5
# The CUDA context of vLLM's engine process (CUDA 13, lazy module loading):
# outside gpu_memory_utilization, so taken from the budget first.
CUDA_CONTEXT_GB = 0.5
# Inside vLLM's share but not KV cache: the activation peak of a 2048-token
# step (vLLM's batched-token default for an engine), CUDA graphs for batches
# of up to a few dozen sequences, cuBLAS workspaces.
ENGINE_OVERHEAD_GB = 1.0
# An NVIDIA L40 as NVML and CUDA report it: 46,068 MiB (48.3 GB, ≈ 45.0 GiB).
L40_TOTAL_BYTES = 46_068 * 2**20
# vLLM captures CUDA graphs for batches of 1, 2, 4, then every multiple of 8:
# a batch of 17 runs padded to 24, so the batch cap is a multiple of 8.
CUDA_GRAPH_STEP = 8


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What decides a model's memory: its weights and its KV cache per token."""

    weights_bytes: int
    kv_bytes_per_token: int


# carlosvillu/gemma2-9b-teacher-eval-nota-feedback (Gemma2-9B): 9.24e9
# parameters; KV = 42 layers × 2 (K, V) × 8 KV heads × 256 head_dim × 2 bytes.
_GEMMA2_9B_KV = 42 * 2 * 8 * 256 * 2  # 344,064 bytes per token
GEMMA2_9B_BF16 = ModelShape(weights_bytes=int(9.24e9 * 2), kv_bytes_per_token=_GEMMA2_9B_KV)
# QUANTIZATION=fp8: the 8.32e9 linear-layer parameters in 1 byte, the tied
# embedding / LM head (0.92e9) kept in bf16. The KV cache stays bf16.
GEMMA2_9B_FP8 = ModelShape(weights_bytes=int(8.32e9 * 1 + 0.92e9 * 2), kv_bytes_per_token=_GEMMA2_9B_KV)

# One text (docs/performance.md, section 1): a ~300-token prompt and ~70
# output tokens, 370 rounded up to 16-token blocks = 384 tokens of KV when it
# finishes; with prefix caching the shared instruction's 144 tokens (9 whole
# blocks) are held once for all texts, so each text owns 240.
TEXT_TOKENS = 384
SHARED_PREFIX_TOKENS = 144
TEXT_OWN_TOKENS = TEXT_TOKENS - SHARED_PREFIX_TOKENS


def vllm_fraction(budget_gb: float, total_bytes: int) -> float:
    """gpu_memory_utilization that keeps the service's footprint within ``budget_gb``.

    Rounded down to 3 decimals: vLLM treats the fraction as a ceiling."""
    share = (budget_gb - CUDA_CONTEXT_GB) * GB / total_bytes
    if share <= 0:
        raise ValueError(f"GPU_MEMORY_BUDGET_GB={budget_gb:g} leaves nothing after the CUDA context")
    if share > 1:
        raise ValueError(f"GPU_MEMORY_BUDGET_GB={budget_gb:g} is more than the GPU's {total_bytes / GB:.1f} GB")
    return math.floor(share * 1000) / 1000


def peak_bytes(fraction: float, total_bytes: int) -> int:
    """The footprint the service reaches at most, by the estimates above."""
    return math.ceil(fraction * total_bytes) + int(CUDA_CONTEXT_GB * GB)


def kv_cache_bytes(fraction: float, total_bytes: int, model: ModelShape) -> int:
    """What vLLM's share leaves for the KV cache after the weights and the engine's overhead."""
    return math.ceil(fraction * total_bytes) - model.weights_bytes - int(ENGINE_OVERHEAD_GB * GB)


def texts_in_flight(kv_bytes: int, model: ModelShape) -> int:
    """Texts whose KV fits at once (prefix caching on)."""
    tokens = kv_bytes // model.kv_bytes_per_token
    return max(0, (tokens - SHARED_PREFIX_TOKENS) // TEXT_OWN_TOKENS)


def max_num_seqs_for(kv_bytes: int, model: ModelShape) -> int:
    """The batch cap the KV cache can hold without preempting: whole CUDA-graph steps, at least 1.

    More sequences than this would only make vLLM preempt and recompute."""
    fits = texts_in_flight(kv_bytes, model)
    return fits // CUDA_GRAPH_STEP * CUDA_GRAPH_STEP if fits >= CUDA_GRAPH_STEP else max(1, fits)


def default_max_num_seqs(model: ModelShape, budget_gb: float = DEFAULT_BUDGET_GB) -> int:
    """MAX_NUM_SEQS's GPU default: the production model on an L40 under the default budget."""
    fraction = vllm_fraction(budget_gb, L40_TOTAL_BYTES)
    return max_num_seqs_for(kv_cache_bytes(fraction, L40_TOTAL_BYTES, model), model)


# Written out (and checked against the arithmetic by tests/engine/test_gpu_budget.py)
# so that the settings reference shows numbers:
#   bf16: (21.5 - 0.5) GB / 48.31 GB -> 0.434; 0.434 × 48.31 = 20.96 GB;
#         KV = 20.96 - 18.48 - 1.0 = 1.48 GB = 4,315 tokens -> (4,315 - 144) / 240 = 17 texts -> 16
#   fp8:  KV = 20.96 - 10.16 - 1.0 = 9.80 GB = 28,496 tokens -> 118 texts -> 112
GPU_MAX_NUM_SEQS_BF16 = 16
GPU_MAX_NUM_SEQS_FP8 = 112
