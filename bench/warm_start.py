"""The first wave after a start, on a loaded machine (issue 19.5): no grammar timeout, no retry.

    .venv/bin/python -m bench.warm_start [--hogs 2] [--wave 8] [--cold]

Starts ``--hogs`` busy-loop processes (`python -c 'while 1: pass'`), then a
fresh engine in a child process, and grades the first ``--wave`` sample
items at once, as a consumer's first fetch would. Reports the engine's load
and warm-up seconds, each item's attempts, the engine's errored generations,
and the lines of the child's log (vLLM's engine process logs there) that say
a grammar failed: `Regex compilation timed out` / `Failed to compile grammar`.

``--cold`` is the behaviour before the fix, for comparison: no warm-up and
vLLM's own 5 s compilation timeout. Exit status 1 when the first wave met a
compilation failure or a retry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

FAILURE_MARKERS = ("Regex compilation timed out", "Failed to compile grammar")


async def _first_wave(wave: int, warm_up: bool) -> dict[str, object]:
    from bench.common import sample_items
    from consumer.contract import Item
    from consumer.engine.factory import build_engine
    from consumer.settings import Settings

    started = time.monotonic()
    engine = await build_engine(Settings(_env_file=None), warm_up=warm_up)  # type: ignore[call-arg]
    ready_s = time.monotonic() - started
    try:
        items = [Item.model_validate(raw) for raw in sample_items()[:wave]]
        started = time.monotonic()
        outcomes = await asyncio.gather(*(engine.grade(item, f"first-{i}") for i, item in enumerate(items)))
        wave_s = time.monotonic() - started
        stats = engine.stats()
    finally:
        await engine.close()
    return {
        "ready_s": round(ready_s, 1),
        "warm_up_s": None if stats.warm_up_s is None else round(stats.warm_up_s, 1),
        "first_wave_s": round(wave_s, 1),
        "attempts": [o.attempts for o in outcomes],
        "errors": [o.error.code.value for o in outcomes if o.error is not None],
        "errored_generations": stats.errored_generations,
        "retried_items": stats.retried_items,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hogs", type=int, default=2, help="busy-loop processes beside the engine")
    parser.add_argument("--wave", type=int, default=8, help="items sent at once right after the start")
    parser.add_argument("--cold", action="store_true", help="before the fix: no warm-up, vLLM's 5 s timeout")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(asyncio.run(_first_wave(args.wave, warm_up=not args.cold))), flush=True)
        return 0
    env = dict(os.environ)
    if args.cold:
        env["VLLM_REGEX_COMPILATION_TIMEOUT_S"] = "5"  # vLLM 0.32's default
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.hogs)]
    try:
        child = [sys.executable, "-m", "bench.warm_start", "--child", "--wave", str(args.wave)]
        child += ["--cold"] if args.cold else []
        done = subprocess.run(child, env=env, capture_output=True, text=True, check=False)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    log = done.stdout + done.stderr
    result_lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not result_lines:
        print(log[-4000:], file=sys.stderr)
        return 2
    figures = json.loads(result_lines[-1].removeprefix("RESULT "))
    figures |= {
        "hogs": args.hogs,
        "cold": args.cold,
        "grammar_failures_in_log": sum(log.count(marker) for marker in FAILURE_MARKERS),
    }
    print(json.dumps(figures, indent=1))
    attempts = figures["attempts"]
    clean = figures["grammar_failures_in_log"] == 0 and isinstance(attempts, list) and set(attempts) == {1}
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
