"""The long fault runs: many kill points, long churn, outages. Prints the table.

    .venv/bin/python scripts/fault_matrix.py [--kills 20] [--churn-s 60] [--out docs/faults.md]

Uses its own embedded broker (or KAFKA_BOOTSTRAP_SERVERS) and real consumer
processes with the fake engine; CI runs a few of the same scenarios
(tests/pipeline/test_faults_process.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumer.testing.faults import (
    FaultRun,
    broker_outage,
    cancel_during_rebalance,
    churn,
    join_during_jobs,
    kill9_during_cancel,
    kill9_during_job,
    sigterm_during_job,
)
from consumer.tools.broker import EmbeddedBroker

GROUP_KWARGS = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}


def row(fault: str, runs: list[FaultRun]) -> str:
    if not runs:
        return f"| {fault} | 0 | – | – | – |"
    dups = [r.duplicates for r in runs]
    recovery = [r.recovery_s for r in runs]
    return (
        f"| {fault} | {len(runs)} | {sum(r.lost for r in runs)} | {max(dups)} / {statistics.mean(dups):.0f} "
        f"| {statistics.median(recovery):.1f} s (max {max(recovery):.1f} s) |"
    )


async def run_matrix(args: argparse.Namespace) -> tuple[str, bool]:
    rng = random.Random(args.seed)
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None if external else EmbeddedBroker().start()
    bootstrap = external or (broker.bootstrap_servers if broker else "")
    group = {} if external else GROUP_KWARGS
    rows: list[str] = []
    cancel_rows: list[str] = []
    log_dir = Path(tempfile.mkdtemp(prefix="texteval-faults-"))
    try:
        kills = []
        for n in range(args.kills):
            run = await kill9_during_job(bootstrap, group, log_dir, kill_after=rng.randint(50, 1950))
            print(f"kill -9 {n + 1}/{args.kills}: {run}", flush=True)
            kills.append(run)
        rows.append(row("`kill -9` mid 2000-item job, restart (recovery: restart → all results)", kills))

        terms = []
        for n in range(args.sigterms):
            run, code, drain_s = await sigterm_during_job(bootstrap, group, log_dir, stop_after=rng.randint(100, 1500))
            assert code == 0, f"exit code {code}"
            print(f"SIGTERM {n + 1}/{args.sigterms}: {run} (exit {code}, drain {drain_s:.1f} s)", flush=True)
            terms.append(run)
        rows.append(row("SIGTERM mid-job: drain, exit 0, restart (recovery: drain time)", terms))

        joins = []
        for n in range(args.joins):
            run = await join_during_jobs(bootstrap, group, log_dir, join_after=rng.randint(200, 3000))
            print(f"join {n + 1}/{args.joins}: {run}", flush=True)
            joins.append(run)
        rows.append(row("a second consumer joins a group of one while 3 × 2000-item jobs run (100 ms × 16)"
                        " (recovery: join → all results)", joins))  # fmt: skip

        churns = []
        for n in range(args.churns):
            run = await churn(bootstrap, group, log_dir, duration_s=args.churn_s, seed=args.seed + n)
            print(f"churn {n + 1}/{args.churns}: {run}", flush=True)
            churns.append(run)
        rows.append(
            row(f"3 consumers started/stopped at random for {args.churn_s:.0f} s (recovery: after churn)", churns)
        )

        outages = []
        for n in range(args.outages):
            run = await broker_outage(log_dir, outage_s=args.outage_s)
            print(f"outage {n + 1}/{args.outages}: {run}", flush=True)
            outages.append(run)
        rows.append(row(f"broker unreachable {args.outage_s:.0f} s mid-job (recovery: restore → all results)", outages))

        for scenario in (cancel_during_rebalance, kill9_during_cancel):
            cancels = []
            for n in range(args.cancels):
                cancel = await scenario(bootstrap, group, log_dir)
                print(f"{cancel.fault} {n + 1}/{args.cancels}: {cancel}", flush=True)
                cancels.append(cancel)
            if cancels:
                once = sum(c.terminal_events == ["cancelled"] for c in cancels)
                late = [c.results_after_cancel for c in cancels]
                took = sorted(c.cancel_to_event_s for c in cancels)
                cancel_rows.append(
                    f"| {cancels[0].fault} | {len(cancels)} | {once} of {len(cancels)} | {max(late)} / "
                    f"{statistics.mean(late):.0f} | {took[len(took) // 2]:.1f} s (max {took[-1]:.1f} s) |"
                )
    finally:
        if broker is not None:
            broker.stop()
    header = [
        f"# Fault runs — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"broker: {'external ' + external if external else 'embedded Tansu'}; consumers: `texteval run --engine fake` "
        "(kill -9 and cancels: 200 ms per item, 16 at once; others 100 ms, 64) as separate processes. "
        "Lost = a request item with no result.",
        "",
        "| fault | runs | lost | duplicates max / mean | recovery time (median) |",
        "|---|---|---|---|---|",
    ]
    cancel_table = [
        "",
        "| cancel under a fault | runs | ended by exactly one `cancelled` | results after it max / mean "
        "| command → `cancelled` (median) |",
        "|---|---|---|---|---|",
        *cancel_rows,
    ]
    return "\n".join(header + rows + cancel_table) + "\n", all(" | 0 | " in r for r in rows)


def main(args: argparse.Namespace) -> int:
    table, nothing_lost = asyncio.run(run_matrix(args))
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    return 0 if nothing_lost else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--sigterms", type=int, default=3)
    parser.add_argument("--joins", type=int, default=5)
    parser.add_argument("--churns", type=int, default=1)
    parser.add_argument("--churn-s", type=float, default=60.0)
    parser.add_argument("--outages", type=int, default=2)
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--cancels", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="docs/faults.md")
    sys.exit(main(parser.parse_args()))
