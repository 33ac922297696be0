"""B1 with the grade distribution on and off (issue 22.6): what contract 1.2's confidence costs.

    .venv/bin/python -m bench.grade_distribution [--prompts 48] [--reps 2] [--feedback-chars 176]

One engine, the same tagged prompts all in flight (B1's raw arm), two
parameter sets that differ only in the digit log-probabilities
(``logprob_token_ids`` + ``flat_logprobs``, as ``VllmEngine`` sends them with
GRADE_DISTRIBUTION=true); the "on" arm also reads each output's distribution,
as ``grade`` does. One pair of arms runs first and is not counted: the first
arm of an engine pays for what every later one finds done (the shared
instruction's prefill in the prefix cache, first calls of compiled kernels at
a full batch); on 2026-12-02 the engine's first arm, an "on", was 15 % below
the other three. Arms then alternate on/off/off/on... so drift on a shared machine
hits both alike; each arm has its own tag (no prefix-cache reuse between arms
beyond the shared instruction). Prints texts/s per arm, the ratio off/on of
each pair (1.03 = the distribution costs 3%), and their mean and median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import TYPE_CHECKING

from bench.common import tagged_items
from bench.raw_engine import token_ids

if TYPE_CHECKING:
    from vllm import SamplingParams

    from consumer.engine.vllm_engine import VllmEngine


async def _arm(engine: VllmEngine, params: SamplingParams, prompts: list[list[int]], tag: str, read: bool) -> float:
    started = time.perf_counter()

    async def one(i: int, ids: list[int]) -> None:
        final = await engine.generate(ids, 0, f"{tag}-{i}", params)
        if read and engine.distribution(final.outputs[0]) is None:
            raise RuntimeError("an output without its grade distribution")

    await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))
    return len(prompts) / (time.perf_counter() - started)


async def measure(prompts: int, reps: int, feedback_chars: int) -> dict[str, object]:
    from consumer.engine.factory import build_engine
    from consumer.settings import Settings

    settings = Settings(_env_file=None, FEEDBACK_MAX_CHARS=feedback_chars, GRADE_DISTRIBUTION=True)  # type: ignore[call-arg]
    engine = await build_engine(settings)
    try:
        on = engine.params(0)
        off = on.clone()
        off.logprob_token_ids = None
        off.flat_logprobs = False
        figures: dict[str, list[float]] = {"on": [], "off": []}
        warm_up: dict[str, float] = {}
        order = [("on", "off"), ("off", "on")]
        for rep in range(-1, reps):  # rep -1: the uncounted pair
            for arm in order[rep % 2]:
                tag = f"gd{rep}{arm}"
                ids = token_ids(engine, tagged_items(prompts, tag))
                params = on if arm == "on" else off
                tps = await _arm(engine, params, ids, tag, read=arm == "on")
                if rep < 0:
                    warm_up[arm] = round(tps, 3)
                else:
                    figures[arm].append(tps)
    finally:
        await engine.close()
    on_tps, off_tps = statistics.median(figures["on"]), statistics.median(figures["off"])
    pairs = [off / on_ for on_, off in zip(figures["on"], figures["off"], strict=True)]
    return {
        "uncounted_pair": warm_up,
        "pair_ratios_off_over_on": [round(r, 3) for r in pairs],
        "median_pair_ratio": round(statistics.median(pairs), 4),
        "mean_pair_ratio": round(statistics.fmean(pairs), 4),
        "prompts": prompts,
        "reps": reps,
        "feedback_chars": feedback_chars,
        "texts_per_s": figures,
        "median_on": round(on_tps, 3),
        "median_off": round(off_tps, 3),
        "cost_ratio_off_over_on": round(off_tps / on_tps, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--feedback-chars", type=int, default=176)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.prompts, args.reps, args.feedback_chars)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
