"""B10: what the scheduler costs the real engine: its bounded depth vs every item in flight.

Both arms grade the same prompts through the consumer's own path
(``Scheduler`` → ``VllmEngine.grade``: prompt, tokenizer, vLLM, output
validation); the only difference is the scheduler's depth. "All in flight"
is depth unbounded (``ENGINE_QUEUE_DEPTH=0``, every admitted item handed to
vLLM at once, as before the scheduler); "scheduled" is the derived depth
(``MAX_NUM_SEQS`` plus a quarter), refilled one slot at a time as items
finish. ``make bench`` loads the engine with MAX_NUM_SEQS 64 so that depth
(80) is below the 200 prompts and the refill is exercised, as in production
(2000-item jobs, MAX_NUM_SEQS 256). Target (issue 12): scheduled ≥ 0.98 ×
all in flight.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from bench import raw_engine
from bench.common import BenchResult, Scale, arm_order, median, tagged_items
from consumer.contract import Item, ItemStatus
from consumer.metrics import Metrics
from consumer.pipeline.scheduler import Scheduler

if TYPE_CHECKING:
    from consumer.engine.base import GradeOutcome
    from consumer.engine.vllm_engine import VllmEngine

ID, TARGET_RATIO = "B10", 0.98
WHAT = "the scheduler at its depth vs every item in flight, same engine and prompts (through `grade`)"
TARGET = f"≥ {TARGET_RATIO}×"


async def _arm(engine: VllmEngine, items: list[Item], depth: int | None, tag: str) -> tuple[float, int]:
    """Texts per second (first submit → last outcome) and how many were graded ok."""
    scheduler = Scheduler(engine, Metrics(), depth=depth)
    outcomes: dict[int, GradeOutcome] = {}
    finished = asyncio.Event()

    def deliver(index: int, outcome: GradeOutcome) -> None:
        outcomes[index] = outcome
        if len(outcomes) == len(items):
            finished.set()

    started = time.perf_counter()
    scheduler.submit(tag, items, deliver)
    await finished.wait()
    seconds = time.perf_counter() - started
    return len(items) / seconds, sum(o.status is ItemStatus.OK for o in outcomes.values())


async def run(engine: VllmEngine, scale: Scale, *, depth: int, max_num_seqs: int) -> BenchResult:
    """``depth``: the scheduler's, as the settings derive it from ``max_num_seqs`` (the engine's)."""
    rates: dict[str, list[float]] = {"all": [], "scheduled": []}
    ratios: list[float] = []
    details: list[str] = []
    ok = graded = 0
    await raw_engine.warm_up(engine, scale.warmup_prompts, "b10-warm")
    for rep in range(scale.reps):
        rep_rates: dict[str, float] = {}
        for arm in arm_order(rep, ("all", "scheduled")):
            tag = f"b10{arm}-r{rep}"
            items = [Item.model_validate(raw) for raw in tagged_items(scale.prompts, tag)]
            rep_rates[arm], good = await _arm(engine, items, None if arm == "all" else depth, tag)
            ok, graded = ok + good, graded + len(items)
            rates[arm].append(rep_rates[arm])
        ratios.append(rep_rates["scheduled"] / rep_rates["all"])
        details.append(
            f"all in flight {rep_rates['all']:.2f}, scheduled (depth {depth}) {rep_rates['scheduled']:.2f}"
            f" texts/s ({ratios[-1]:.3f}×)"
        )
        print(f"  B10 rep {rep + 1}/{scale.reps}: {details[-1]}", flush=True)
    ratio = median(ratios)
    notes = [
        f"MAX_NUM_SEQS {max_num_seqs}, scheduler depth {depth}, {scale.prompts} prompts per arm;"
        f" {ok}/{graded} graded ok over both arms.",
        raw_engine.engine_note(engine),
    ]
    if scale.prompts <= depth:
        notes.append("Fewer prompts than the depth: both arms put everything in flight here.")
    return BenchResult(
        id=ID,
        what=f"{WHAT}, {scale.prompts} prompts",
        result=f"scheduled {median(rates['scheduled']):.2f} vs all in flight {median(rates['all']):.2f} texts/s"
        f" = **{ratio:.3f}×**",
        target=TARGET,
        met=ratio >= TARGET_RATIO,
        figures={
            "ratio": ratio,
            "scheduled_texts_per_s": median(rates["scheduled"]),
            "all_texts_per_s": median(rates["all"]),
        },
        details=details,
        notes=notes,
    )
