"""B2: the prototype's design (sequential chunks of 10) vs ours (all in flight), same engine.

Both arms go through the same raw ``AsyncLLM`` path with the same prompts
and parameters; only how many requests are in flight differs. Target: ours
≥ 1.5 × prototype. That holds on a GPU, where decode is memory-bound: one
step reads every weight whether it serves 10 sequences or 200, so bigger
batches are nearly free. On a CPU the step is compute-bound: a batch of 200
costs almost 20 × a batch of 10, and the gain is small (notes: 1.13-1.22×).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench import raw_engine
from bench.common import BenchResult, Scale, arm_order, median, tagged_items

if TYPE_CHECKING:
    from consumer.engine.vllm_engine import VllmEngine

ID, TARGET_RATIO = "B2", 1.5
WHAT = "ours (all in flight) vs the prototype (sequential chunks), same engine"
TARGET = f"≥ {TARGET_RATIO}× (GPU figure)"


async def run(engine: VllmEngine, scale: Scale) -> BenchResult:
    ours_rates: list[float] = []
    proto_rates: list[float] = []
    ratios: list[float] = []
    details: list[str] = []
    await raw_engine.warm_up(engine, scale.warmup_prompts, "b2-warm")
    for rep in range(scale.reps):
        rates: dict[str, float] = {}
        for arm in arm_order(rep, ("ours", "prototype")):
            tag = f"b2{arm}-r{rep}"
            prompts = raw_engine.token_ids(engine, tagged_items(scale.prompts, tag))
            if arm == "ours":
                rates[arm] = (await raw_engine.all_in_flight(engine, prompts, tag)).texts_per_s
            else:
                rates[arm] = (await raw_engine.in_chunks(engine, prompts, tag, scale.chunk)).texts_per_s
        ours_rates.append(rates["ours"])
        proto_rates.append(rates["prototype"])
        ratios.append(rates["ours"] / rates["prototype"])
        details.append(f"ours {rates['ours']:.2f}, prototype {rates['prototype']:.2f} texts/s ({ratios[-1]:.3f}×)")
        print(f"  B2 rep {rep + 1}/{scale.reps}: {details[-1]}", flush=True)
    ratio = median(ratios)
    notes = [
        "Same engine, prompts and sampling; raw `AsyncLLM` in both arms.",
        raw_engine.engine_note(engine),
        "On CPU a decode step is compute-bound (its cost grows with the batch), so keeping every request in"
        " flight gains little; on a GPU it is memory-bound (a step reads all weights for 10 sequences or 200),"
        " which is where the ≥ 1.5× target comes from.",
    ]
    if scale.prompts <= scale.chunk:
        notes.append("Too few prompts for more than one chunk: both arms are the same here.")
    return BenchResult(
        id=ID,
        what=f"ours (all in flight) vs the prototype (sequential chunks of {scale.chunk}), {scale.prompts} prompts",
        result=f"ours {median(ours_rates):.2f} vs prototype {median(proto_rates):.2f} texts/s = **{ratio:.3f}×**",
        target=TARGET,
        met=ratio >= TARGET_RATIO,
        figures={"ratio": ratio, "ours_texts_per_s": median(ours_rates), "prototype_texts_per_s": median(proto_rates)},
        details=details,
        notes=notes,
    )
