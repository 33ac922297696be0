"""Grades that stand (issue 27): the same grade for the same text, attempts that do not lift it, and what it costs.

    .venv/bin/python -m bench.grades_that_stand determinism [--items 36] [--mix 500]
    .venv/bin/python -m bench.grades_that_stand attacks
    .venv/bin/python -m bench.grades_that_stand cost [--prompts 96] [--reps 2]

- ``determinism``: the held-out set (36 clean answers of tests/data/review,
  every third) graded in three arrangements, each in a fresh process (file
  order; reversed and interleaved with other items; file order again), then
  the 500-item mix graded twice in fresh processes (file order; reversed).
  Prints identical grades, ``nota`` == argmax, and whether every difference
  was flagged ``near_tie``.
- ``attacks``: every attacked answer of tests/data/review/attacks.jsonl and
  its clean version, graded in one process: flagged with a reason that names
  the attempt, and how far the attacked grade is from the clean one.
- ``cost``: B1's end-to-end arm (broker → consumer → the same engine) with
  review reasons and decision records on, and off (SCREEN_ANSWERS and
  DECISION_RECORDS false), alternating, one engine. Prints texts/s and the
  ratio off/on per pair.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REVIEW = Path(__file__).resolve().parents[1] / "tests" / "data" / "review"


def _rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (REVIEW / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def _items(rows: list[dict[str, Any]], field: str = "respuesta") -> list[dict[str, str]]:
    questions = {q["qid"]: q for q in _rows("questions.jsonl")}
    return [
        {
            "id_alumno": f"{r['id_alumno']}{'' if field == 'respuesta' else '-' + field}",
            "curso": questions[r["qid"]]["curso"],
            "consigna": questions[r["qid"]]["consigna"],
            "respuesta": r[field],
        }
        for r in rows
    ]


ENGINE_DEPTH = 64  # items in the engine at once, as the consumer's scheduler hands them (ENGINE_QUEUE_DEPTH)


async def _grade_all(items: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Many items in flight (a bounded depth, as the consumer's scheduler keeps: each item's
    ENGINE_TIMEOUT_S runs from when it reaches the engine, not from when the job arrived)."""
    from consumer.contract import Item
    from consumer.engine.factory import build_engine
    from consumer.settings import Settings

    engine = await build_engine(Settings(_env_file=None))  # type: ignore[call-arg]
    slots = asyncio.Semaphore(ENGINE_DEPTH)

    async def one(i: int, item: dict[str, str]) -> Any:
        async with slots:
            return await engine.grade(Item.model_validate(item), f"g{i}")

    try:
        outcomes = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
    finally:
        await engine.close()
    out = []
    for item, outcome in zip(items, outcomes, strict=True):
        sure = outcome.grade_confidence
        out.append(
            {
                "id": item["id_alumno"],
                "status": outcome.status.value,
                "nota": outcome.nota,
                "probabilities": list(sure.probabilities) if sure else None,
                "reasons": [r.value for r in outcome.review_reasons or ()],
                "attempts": outcome.attempts,
                "error": outcome.error.code.value if outcome.error else None,
            }
        )
    return out


def _fresh_process(items: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.json", Path(tmp) / "out.json"
        source.write_text(json.dumps(items), encoding="utf-8")
        subprocess.run(
            [sys.executable, "-m", "bench.grades_that_stand", "grade", str(source), str(target)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return {g["id"]: g for g in json.loads(target.read_text(encoding="utf-8"))}


def _compare(name: str, runs: list[dict[str, dict[str, Any]]], ids: list[str]) -> dict[str, Any]:
    ok = [g for run in runs for g in run.values() if g["status"] == "ok" and g["id"] in ids]
    argmax = sum(g["probabilities"][g["nota"]] == max(g["probabilities"]) for g in ok)
    errors = Counter(g["error"] for run in runs for g in run.values() if g["status"] != "ok" and g["id"] in ids)
    graded = [i for i in ids if all(run[i]["status"] == "ok" for run in runs)]
    differ = [i for i in graded if len({run[i]["nota"] for run in runs}) > 1]
    flagged = [i for i in differ if all("near_tie" in run[i]["reasons"] for run in runs if run[i]["status"] == "ok")]
    near_ties = sum("near_tie" in runs[0][i]["reasons"] for i in ids)
    figures = {
        "set": name,
        "items": len(ids),
        "graded_ok_in_every_run": len(graded),
        "error_results": dict(errors),
        "identical": len(graded) - len(differ),
        "argmax": f"{argmax}/{len(ok)}",
        "differences_flagged_near_tie": f"{len(flagged)}/{len(differ)}",
        "near_tie_in_first_run": near_ties,
        "grades_first_run": dict(sorted(Counter(runs[0][i]["nota"] for i in ids).items(), key=lambda kv: str(kv[0]))),
    }
    print(json.dumps(figures, ensure_ascii=False), flush=True)
    return figures


def determinism(n_items: int, n_mix: int) -> None:
    clean = _items(_rows("clean.jsonl"))[::3][:n_items]
    others = _items(_rows("mix.jsonl"))[-40:]
    ids = [i["id_alumno"] for i in clean]
    mixed = [x for pair in zip(reversed(clean), others, strict=False) for x in pair] + others[len(clean) :]
    started = time.perf_counter()
    if n_items:
        runs = [_fresh_process(clean), _fresh_process(mixed), _fresh_process(clean)]
        _compare(f"held-out {len(ids)}, three arrangements in fresh processes", runs, ids)
    mix = _items(_rows("mix.jsonl"))[:n_mix]
    mix_ids = [i["id_alumno"] for i in mix]
    runs = [_fresh_process(mix), _fresh_process(list(reversed(mix)))]
    _compare(f"mix {len(mix_ids)}, file order and reversed, fresh processes", runs, mix_ids)
    print(f"determinism: {time.perf_counter() - started:.0f} s", flush=True)


async def attacks() -> None:
    rows = _rows("attacks.jsonl")
    attacked, clean = _items(rows), _items(rows, "clean")
    graded = await _grade_all([*clean, *attacked])
    clean_g, attacked_g = graded[: len(rows)], graded[len(rows) :]
    expected = {"keyword_stuffing": "keyword_stuffing", "repetition": "repetition"}
    named = lifted = lifted2 = 0
    by_kind: Counter[str] = Counter()
    for row, c, a in zip(rows, clean_g, attacked_g, strict=True):
        named += expected.get(row["attack"], "suspected_injection") in a["reasons"]
        if a["nota"] is not None and c["nota"] is not None:
            lifted += a["nota"] > c["nota"]
            if a["nota"] - c["nota"] >= 2:
                lifted2 += 1
                by_kind[row["attack"]] += 1
    print(json.dumps({
        "attacked": len(rows), "flagged_with_a_reason_naming_the_attempt": named,
        "graded_higher_than_clean": lifted, "graded_2_or_more_above_clean": lifted2, "by_kind": by_kind,
        "clean_grades": Counter(c["nota"] for c in clean_g), "attacked_grades": Counter(a["nota"] for a in attacked_g),
        "errors": Counter(g["error"] for g in graded if g["error"]),
    }, ensure_ascii=False, default=str), flush=True)  # fmt: skip


async def cost(prompts: int, reps: int) -> None:
    from bench.b1_e2e_vs_raw import _e2e_arm, _Tally
    from bench.broker_io import JobProducer, consumer_ready, fresh_settings, kafka_target, output_reader
    from bench.common import arm_order, tagged_items
    from consumer.engine.factory import build_engine
    from consumer.engine.screening import shared_screener
    from consumer.metrics import Metrics
    from consumer.settings import Settings

    engine = await build_engine(Settings(_env_file=None, FEEDBACK_MAX_CHARS=40))  # type: ignore[call-arg]
    figures: dict[str, list[float]] = {"on": [], "off": []}
    try:
        with kafka_target() as kafka:
            for rep in range(reps + 1):  # the first pair warms the engine and is not counted
                rates: dict[str, float] = {}
                for arm in arm_order(rep, ("on", "off")):
                    on = arm == "on"
                    engine.screener = shared_screener() if on else None
                    settings = await fresh_settings(kafka, DECISION_RECORDS=on, SCREEN_ANSWERS=on)
                    async with (
                        consumer_ready(settings, engine, Metrics()),
                        JobProducer(settings) as producer,
                        output_reader(settings, [settings.kafka.progress_topic]) as reader,
                    ):
                        tag = f"gts-{arm}-{rep}"
                        rates[arm] = await _e2e_arm(
                            producer, reader, settings, tagged_items(prompts, tag), tag, _Tally()
                        )
                print(f"  pair {rep}: on {rates['on']:.2f}, off {rates['off']:.2f} texts/s, "
                      f"off/on {rates['off'] / rates['on']:.3f}{' (warm-up, not counted)' if rep == 0 else ''}",
                      flush=True)  # fmt: skip
                if rep:
                    figures["on"].append(rates["on"])
                    figures["off"].append(rates["off"])
    finally:
        await engine.close()
    ratios = [off / on for on, off in zip(figures["on"], figures["off"], strict=True)]
    print(json.dumps({"prompts": prompts, "on": figures["on"], "off": figures["off"], "off_over_on": ratios,
                      "mean_ratio": sum(ratios) / len(ratios)}), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("determinism")
    d.add_argument("--items", type=int, default=36)
    d.add_argument("--mix", type=int, default=500)
    sub.add_parser("attacks")
    c = sub.add_parser("cost")
    c.add_argument("--prompts", type=int, default=96)
    c.add_argument("--reps", type=int, default=2)
    g = sub.add_parser("grade")
    g.add_argument("source")
    g.add_argument("target")
    args = parser.parse_args()
    if args.what == "determinism":
        determinism(args.items, args.mix)
    elif args.what == "attacks":
        asyncio.run(attacks())
    elif args.what == "cost":
        asyncio.run(cost(args.prompts, args.reps))
    else:
        items = json.loads(Path(args.source).read_text(encoding="utf-8"))
        Path(args.target).write_text(json.dumps(asyncio.run(_grade_all(items))), encoding="utf-8")


if __name__ == "__main__":
    main()
