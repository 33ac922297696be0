"""B1: the same prompts through raw ``AsyncLLM`` vs through the broker and the consumer.

Raw: the engine's own token ids and sampling parameters, all requests in
flight, first submit -> last output. End to end: the same number of prompts
as one job produced to the broker, consumed by ``consumer_running`` with the
SAME engine instance, produce -> its ``complete`` event read. Target: e2e ≥
0.95 × raw, i.e. the pipeline costs at most 5 % of what the engine allows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench import raw_engine
from bench.broker_io import (
    JobProducer,
    KafkaTarget,
    consumer_ready,
    encode_job,
    fresh_settings,
    new_job_id,
    output_reader,
    wait_complete,
)
from bench.common import BenchResult, Scale, arm_order, median, tagged_items
from consumer.metrics import Metrics
from consumer.settings import Settings

if TYPE_CHECKING:
    from consumer.engine.vllm_engine import VllmEngine
    from consumer.kafka import TopicReader

ID, TARGET_RATIO = "B1", 0.95
WHAT = "raw vLLM `AsyncLLM` (all in flight) vs end to end: broker → consumer → same engine → results"
TARGET = f"≥ {TARGET_RATIO}×"


@dataclass
class _Tally:
    """Output quality of each arm, summed over repetitions (both must do the same work)."""

    raw_texts: int = 0
    raw_stopped: int = 0
    raw_prompt_tokens: int = 0
    raw_cached_tokens: int = 0
    e2e_texts: int = 0
    e2e_ok: int = 0


async def _raw_arm(engine: VllmEngine, items: list[dict[str, str]], tag: str, tally: _Tally) -> float:
    result = await raw_engine.all_in_flight(engine, raw_engine.token_ids(engine, items), tag)
    tally.raw_texts += result.texts
    tally.raw_stopped += result.stopped
    tally.raw_prompt_tokens += result.prompt_tokens
    tally.raw_cached_tokens += result.cached_tokens
    return result.texts_per_s


async def _e2e_arm(
    producer: JobProducer, reader: TopicReader, settings: Settings, items: list[dict[str, str]], tag: str, tally: _Tally
) -> float:
    job_id = new_job_id(tag)
    value = encode_job(job_id, items)
    started = time.perf_counter()
    await producer.send([(job_id, value)])
    complete = await wait_complete(reader, settings.kafka.progress_topic, [job_id], timeout_s=3600)
    seconds = time.perf_counter() - started
    tally.e2e_texts += len(items)
    tally.e2e_ok += int(complete[job_id]["succeeded"])
    return len(items) / seconds


async def run(engine: VllmEngine, kafka: KafkaTarget, scale: Scale) -> BenchResult:
    settings = await fresh_settings(kafka)
    metrics = Metrics()
    tally = _Tally()
    raw_rates: list[float] = []
    e2e_rates: list[float] = []
    ratios: list[float] = []
    details: list[str] = []
    async with (
        consumer_ready(settings, engine, metrics),
        JobProducer(settings) as producer,
        output_reader(settings, [settings.kafka.progress_topic]) as reader,
    ):
        await raw_engine.warm_up(engine, scale.warmup_prompts, "b1-warm")
        for rep in range(scale.reps):
            rates: dict[str, float] = {}
            for arm in arm_order(rep, ("raw", "e2e")):
                tag = f"b1{arm}-r{rep}"
                items = tagged_items(scale.prompts, tag)
                if arm == "raw":
                    rates[arm] = await _raw_arm(engine, items, tag, tally)
                else:
                    rates[arm] = await _e2e_arm(producer, reader, settings, items, tag, tally)
            raw_rates.append(rates["raw"])
            e2e_rates.append(rates["e2e"])
            ratios.append(rates["e2e"] / rates["raw"])
            details.append(f"raw {rates['raw']:.2f}, e2e {rates['e2e']:.2f} texts/s ({ratios[-1]:.3f}×)")
            print(f"  B1 rep {rep + 1}/{scale.reps}: {details[-1]}", flush=True)

    prompt = metrics.registry.get_sample_value("texteval_prompt_tokens_total") or 0.0
    cached = metrics.registry.get_sample_value("texteval_prompt_cached_tokens_total") or 0.0
    hit_rate = cached / prompt if prompt else 0.0
    raw_hit_rate = tally.raw_cached_tokens / tally.raw_prompt_tokens if tally.raw_prompt_tokens else 0.0
    ratio = median(ratios)
    return BenchResult(
        id=ID,
        what=f"{WHAT} ({scale.prompts} prompts)",
        result=f"e2e {median(e2e_rates):.2f} vs raw {median(raw_rates):.2f} texts/s = **{ratio:.3f}×**",
        target=TARGET,
        met=ratio >= TARGET_RATIO,
        figures={
            "ratio": ratio,
            "raw_texts_per_s": median(raw_rates),
            "e2e_texts_per_s": median(e2e_rates),
            "prefix_cache_hit_rate": hit_rate,
        },
        details=details,
        notes=[
            f"Prefix-cache hit rate in the e2e arm (consumer metrics, cached/prompt tokens): {hit_rate:.0%}"
            f" (raw arm, vLLM's own count: {raw_hit_rate:.0%}).",
            f"Valid grades: e2e {tally.e2e_ok}/{tally.e2e_texts} ok; raw {tally.raw_stopped}/{tally.raw_texts}"
            " outputs closed before max_tokens (the consumer retries an invalid output once; raw does not).",
            raw_engine.engine_note(engine),
            "One job per e2e run; the consumer stays in its group between runs (joining is not timed).",
        ],
    )
