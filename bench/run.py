"""Run the benchmarks and write the dated table.

    .venv/bin/python -m bench.run [--smoke] [--only B1,B3] [--out docs/benchmarks.md]

Uses ``KAFKA_BOOTSTRAP_SERVERS`` if set, else its own embedded broker. The
fake-engine benchmarks (B3-B7, B11, B12) run first; then the real engine is loaded
once (project CPU defaults, FEEDBACK_MAX_CHARS=40) for B1 and B2. B8 (the HTTP
gateway) needs no engine and runs with the fake-engine ones. A benchmark that
fails to run is reported as failed and the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from bench import (
    b1_e2e_vs_raw,
    b2_prototype,
    b3_progress_latency,
    b4_pipeline_ceiling,
    b5_memory,
    b6_small_behind_big,
    b7_end_of_term,
    b8_gateway,
    b10_scheduler_cost,
    b11_tenants,
    b12_shadow,
)
from bench.broker_io import KafkaTarget, kafka_target
from bench.common import FULL, REPO, SMOKE, BenchResult, Scale, machine_description, render_section, write_report
from consumer.settings import Settings

if TYPE_CHECKING:
    from consumer.engine.vllm_engine import VllmEngine

MODULES: dict[str, ModuleType] = {
    "B1": b1_e2e_vs_raw,
    "B2": b2_prototype,
    "B3": b3_progress_latency,
    "B4": b4_pipeline_ceiling,
    "B5": b5_memory,
    "B6": b6_small_behind_big,
    "B7": b7_end_of_term,
    "B8": b8_gateway,
    "B10": b10_scheduler_cost,
    "B11": b11_tenants,
    "B12": b12_shadow,
}
ALL = tuple(MODULES)
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"


def engine_settings() -> Settings:
    """The project's CPU defaults, but FEEDBACK_MAX_CHARS=40 (so MAX_TOKENS is derived as 108) and MAX_NUM_SEQS 64.

    A small model otherwise writes the full 176-character feedback and one
    200-prompt arm takes minutes. The environment (MODEL_NAME, ...) still applies.
    """
    overrides: dict[str, object] = {"FEEDBACK_MAX_CHARS": 40}
    if "MAX_NUM_SEQS" not in os.environ:
        # Below the 200 prompts of an arm, so B10's scheduler has to refill
        # (and B1's consumer runs it at its depth), as with 2000-item jobs in production.
        overrides["MAX_NUM_SEQS"] = 64
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg, arg-type]


def settings_description(kafka: KafkaTarget, engine: VllmEngine | None, settings: Settings) -> list[str]:
    consumer = Settings(_env_file=None)  # type: ignore[call-arg]
    device = engine.health().device if engine is not None else "cpu"
    jobs = consumer.jobs
    lines = [
        f"Broker: {kafka.kind}; consumer defaults: MAX_INFLIGHT_ITEMS {jobs.max_inflight_items},"
        f" MAX_CONCURRENT_JOBS {jobs.max_concurrent_jobs}, PROGRESS_FLUSH_MS {jobs.progress_flush_ms},"
        f" SCHEDULING_POLICY {consumer.scheduler.scheduling_policy.value}"
        f" (engine depth {consumer.engine_depth_on(device)}),"
        f" KAFKA_LINGER_MS {consumer.kafka.linger_ms}, COMMIT_INTERVAL_MS 100 (test settings)",
    ]
    if engine is not None:
        cpu_env = ", ".join(
            f"{name}={os.environ[name]}"
            for name in ("VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")
            if name in os.environ
        )
        level = settings.engine.compilation_level
        lines.append(
            f"Engine (B1, B2, B10): {engine.model_name}; MAX_TOKENS {settings.engine.max_tokens} (FEEDBACK_MAX_CHARS"
            f" {settings.engine.feedback_chars}, instead of 380/176), MAX_MODEL_LEN {settings.engine.max_model_len},"
            f" MAX_NUM_SEQS {settings.engine.max_num_seqs_on(device)},"
            f" prefix caching {settings.engine.enable_prefix_caching},"
            f" COMPILATION_LEVEL {'default (eager on CPU)' if level is None else level},"
            f" {settings.engine.dtype or 'DTYPE default (float32 on CPU)'};"
            f" {cpu_env}"
        )
    return lines


async def _guarded(bench_id: str, make: Callable[[], Awaitable[BenchResult]]) -> BenchResult:
    print(f"{bench_id}: running", flush=True)
    started = time.monotonic()
    try:
        result = await make()
    except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
        traceback.print_exc()
        result = BenchResult.failed(bench_id, MODULES[bench_id].WHAT, MODULES[bench_id].TARGET, exc)
    verdict = "met" if result.met else "NOT met"
    print(f"{bench_id}: {result.result} (target {result.target}: {verdict}; {time.monotonic() - started:.0f} s)")
    return result


async def run_all(selected: list[str], scale: Scale) -> tuple[list[BenchResult], list[str]]:
    results: dict[str, BenchResult] = {}
    settings = engine_settings()
    engine: VllmEngine | None = None
    log_dir = Path(tempfile.mkdtemp(prefix="texteval-bench-"))
    with kafka_target() as kafka:
        if "B3" in selected:
            results["B3"] = await _guarded("B3", lambda: b3_progress_latency.run(kafka, scale))
        if "B4" in selected:
            results["B4"] = await _guarded("B4", lambda: b4_pipeline_ceiling.run(kafka, scale))
        if "B5" in selected:
            results["B5"] = await _guarded("B5", lambda: b5_memory.run(kafka, scale, log_dir))
        if "B6" in selected:
            results["B6"] = await _guarded("B6", lambda: b6_small_behind_big.run(kafka, scale))
        if "B7" in selected:
            results["B7"] = await _guarded("B7", lambda: b7_end_of_term.run(kafka, scale))
        if "B11" in selected:
            results["B11"] = await _guarded("B11", lambda: b11_tenants.run(kafka, scale))
        if "B12" in selected:
            results["B12"] = await _guarded("B12", lambda: b12_shadow.run(kafka, scale, log_dir))
        if "B8" in selected:
            results["B8"] = await _guarded("B8", lambda: b8_gateway.run(kafka, scale, log_dir))
        if {"B1", "B2", "B10"} & set(selected):
            from consumer.engine.factory import build_engine

            print("loading the real engine (tens of seconds)", flush=True)
            engine = await build_engine(settings)
            try:
                live = engine
                if "B1" in selected:
                    results["B1"] = await _guarded("B1", lambda: b1_e2e_vs_raw.run(live, kafka, scale))
                if "B2" in selected:
                    results["B2"] = await _guarded("B2", lambda: b2_prototype.run(live, scale))
                if "B10" in selected:
                    device = live.health().device
                    depth, seqs = settings.engine_depth_on(device) or 0, settings.engine.max_num_seqs_on(device)
                    results["B10"] = await _guarded(
                        "B10", lambda: b10_scheduler_cost.run(live, scale, depth=depth, max_num_seqs=seqs)
                    )
            finally:
                await engine.close()
        described = settings_description(kafka, engine, settings)
    if all(r.result != "failed" for r in results.values()):
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"logs of the consumer processes kept in {log_dir}", file=sys.stderr)
    return [results[b] for b in ALL if b in results], described


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repetition: checks the harness only")
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated ids, e.g. B1,B3")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"Markdown file (default {DEFAULT_OUT.relative_to(REPO)}; smoke: none)"
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions of every comparison (default: 3; smoke 1)")
    parser.add_argument("--prompts", type=int, default=None, help="B1, B2, B10: prompts per arm (default: 200)")
    args = parser.parse_args(argv)
    selected = [b.strip().upper() for b in args.only.split(",") if b.strip()]
    if unknown := [b for b in selected if b not in ALL]:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    scale = SMOKE if args.smoke else FULL
    if args.reps is not None:
        scale = dataclasses.replace(scale, reps=max(1, args.reps))
    if args.prompts is not None:
        scale = dataclasses.replace(scale, prompts=max(1, args.prompts))
    out: Path | None = args.out if args.out is not None else (None if args.smoke else DEFAULT_OUT)

    started = datetime.now(UTC)
    machine = machine_description()  # before the run: the load average says how quiet the machine was
    results, settings = asyncio.run(run_all(selected, scale))
    section = render_section(results, scale=scale, started=started, machine=machine, settings=settings)
    print("\n" + section)
    if out is not None:
        write_report(out, section)
        print(f"written to {out}")
    return 1 if any(r.result == "failed" for r in results) else 0


if __name__ == "__main__":  # vLLM spawns worker processes that import this module
    sys.exit(main())
