"""Prompts straight into the engine's ``AsyncLLM``: the ceiling B1 compares against, and B2's two designs.

The same token ids and the same ``SamplingParams`` (first attempt) that
``VllmEngine.grade`` sends, through the same ``VllmEngine.generate`` (one
request straight to ``AsyncLLM``), so the only difference from the consumer
is everything around the engine: prompt checks, output validation, Kafka.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.common import tagged_items
from consumer.contract import Item
from consumer.engine.output import pattern_max_chars

if TYPE_CHECKING:
    from vllm.outputs import RequestOutput

    from consumer.engine.vllm_engine import VllmEngine


@dataclass(frozen=True, slots=True)
class RawRun:
    texts: int
    seconds: float  # first submit -> last output
    stopped: int  # outputs that ended on their own (finish_reason "stop"), not cut at max_tokens
    prompt_tokens: int
    cached_tokens: int  # served from vLLM's prefix cache

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds


def token_ids(engine: VllmEngine, items: Sequence[dict[str, str]]) -> list[list[int]]:
    """Tokenized before the clock starts, as the engine would tokenize them."""
    return [engine.encode(Item.model_validate(raw))[1] for raw in items]


async def _generate(engine: VllmEngine, ids: list[int], request_id: str) -> RequestOutput:
    return await engine.generate(ids, 0, request_id)


def _summary(outputs: Sequence[RequestOutput], seconds: float) -> RawRun:
    return RawRun(
        texts=len(outputs),
        seconds=seconds,
        stopped=sum(1 for o in outputs if o.outputs[0].finish_reason == "stop"),
        prompt_tokens=sum(len(o.prompt_token_ids or ()) for o in outputs),
        cached_tokens=sum(o.num_cached_tokens or 0 for o in outputs),
    )


async def all_in_flight(engine: VllmEngine, prompts: Sequence[list[int]], tag: str) -> RawRun:
    """Our design: every request submitted at once; vLLM batches them continuously."""
    started = time.perf_counter()
    outputs = await asyncio.gather(*(_generate(engine, ids, f"{tag}-{i}") for i, ids in enumerate(prompts)))
    return _summary(outputs, time.perf_counter() - started)


async def in_chunks(engine: VllmEngine, prompts: Sequence[list[int]], tag: str, chunk: int) -> RawRun:
    """The prototype's design: ``chunk`` requests, wait for all of them, then the next ``chunk``."""
    started = time.perf_counter()
    outputs: list[RequestOutput] = []
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        outputs += await asyncio.gather(*(_generate(engine, ids, f"{tag}-{start + i}") for i, ids in enumerate(part)))
    return _summary(outputs, time.perf_counter() - started)


async def warm_up(engine: VllmEngine, prompts: int, tag: str) -> None:
    """Untimed requests first: the output schema's grammar is compiled on first use."""
    if prompts:
        await all_in_flight(engine, token_ids(engine, tagged_items(prompts, tag)), tag)


def engine_note(engine: VllmEngine) -> str:
    """The output budget the figures were measured with (it sets how long each text takes)."""
    params = engine.params(0)
    grammar = params.structured_outputs.regex if params.structured_outputs is not None else None
    feedback = pattern_max_chars(grammar) if grammar else "?"
    return (
        f"Engine: {engine.model_name}, max_tokens {params.max_tokens}, feedback ≤ {feedback} characters"
        " (`make bench`: FEEDBACK_MAX_CHARS=40, so MAX_TOKENS is derived as 108; with the defaults 380/176 a small"
        " model fills the whole feedback and a 200-prompt arm takes minutes)."
    )
