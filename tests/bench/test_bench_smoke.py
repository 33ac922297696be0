"""The benchmark harness at smoke size, so ``make bench`` keeps working.

Only that it runs and reports is checked: positive figures and a table with
every row. Targets are not asserted (the machines are shared and noisy);
the real numbers come from ``make bench``.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    b1_e2e_vs_raw,
    b2_prototype,
    b3_progress_latency,
    b4_pipeline_ceiling,
    b5_memory,
    b6_small_behind_big,
    b7_end_of_term,
    b10_scheduler_cost,
    b11_tenants,
)
from bench.broker_io import KafkaTarget
from bench.common import SMOKE, BenchResult, render_section, write_report
from consumer.engine.vllm_engine import VllmEngine


def check_report(results: list[BenchResult], positive: dict[str, list[str]], tmp_path: Path) -> None:
    for result in results:
        for name in positive[result.id]:
            assert result.figures[name] > 0, (result.id, name, result.figures)
    section = render_section(results, scale=SMOKE, started=datetime.now(UTC), machine=["m"], settings=["s"])
    rows = [line for line in section.splitlines() if line.startswith("| B")]
    assert [row.split(" | ")[0] for row in rows] == [f"| {r.id}" for r in results]
    # A second run goes on top; the first stays below it.
    out = tmp_path / "benchmarks.md"
    write_report(out, section.replace("## ", "## first ", 1))
    write_report(out, section)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks") and text.count("| id | what |") == 2
    assert text.index("## first ") > text.index(section.splitlines()[0])


async def test_fake_engine_benchmarks_run(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], tmp_path: Path
) -> None:
    kafka = KafkaTarget(kafka_bootstrap, kafka_group_kwargs, "test broker")
    results = [
        await b3_progress_latency.run(kafka, SMOKE),
        await b4_pipeline_ceiling.run(kafka, SMOKE),
        await b5_memory.run(kafka, SMOKE, tmp_path),
        await b6_small_behind_big.run(kafka, SMOKE),
        await b7_end_of_term.run(kafka, SMOKE),
        await b11_tenants.run(kafka, SMOKE),
    ]
    positive = {
        "B3": ["p50_ms", "p99_ms", "all_p50_ms", "all_p99_ms"],
        "B4": ["items_per_s"],
        "B5": ["rss_start_mb", "rss_end_mb", "rss_max_mb"],
        "B6": ["fair_small_s", "fifo_small_s", "fair_throughput_share", "fifo_throughput_share"],
        "B7": ["fair_mean_s", "fifo_mean_s", "fair_p95_s", "fifo_p95_s", "worst_big_slowdown", "calm_fair_mean_s"],
        "B11": ["b_alone_s", "b_by_tenant_s", "b_one_pool_s", "throughput_share", "class_fair_s", "big_slowdown"],
    }
    check_report(results, positive, tmp_path)
    b3 = results[0].figures
    assert b3["p99_ms"] >= b3["p50_ms"] and b3["all_p99_ms"] >= b3["p99_ms"] - 1e-9


async def test_real_engine_benchmarks_run(
    real_engine: VllmEngine, kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], tmp_path: Path
) -> None:
    kafka = KafkaTarget(kafka_bootstrap, kafka_group_kwargs, "test broker")
    # The session's engine writes up to 200 tokens (``make bench``: 64), so
    # each arm takes seconds: two prompts keep this test short, and chunks
    # of 1 still make the prototype's arm sequential.
    scale = dataclasses.replace(SMOKE, prompts=2, chunk=1)
    results = [
        await b1_e2e_vs_raw.run(real_engine, kafka, scale),
        await b2_prototype.run(real_engine, scale),
        # Depth 1 below the 2 prompts: the scheduled arm refills.
        await b10_scheduler_cost.run(real_engine, scale, depth=1, max_num_seqs=1),
    ]
    positive = {
        "B1": ["ratio", "raw_texts_per_s", "e2e_texts_per_s", "prefix_cache_hit_rate"],
        "B2": ["ratio", "ours_texts_per_s", "prototype_texts_per_s"],
        "B10": ["ratio", "scheduled_texts_per_s", "all_texts_per_s"],
    }
    check_report(results, positive, tmp_path)
