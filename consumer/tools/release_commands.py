"""``texteval release-check`` and ``texteval calibrate``: the commands' work, as plain functions.

Each command is one async function taking typed arguments (``release_check_command``,
``calibrate_command``); ``add_release_commands`` is only their argparse wiring, so
another command-line front end can call the same functions.

Sources are those of the corrections loop (``consumer.tools.loop_sources``):
a results file (``texteval grade --out``, JSONL or CSV) or ``topic``; the
candidate may also be ``shadow``, ``KAFKA_SHADOW_RESULTS_TOPIC`` read from the
beginning. Corrections count once per result (the latest), erased jobs left
out as in ``texteval agreement``. The subgroup file (``id_alumno,group``
CSV) is read here and goes nowhere else: its groups appear in the report only.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from consumer.tools.release import Thresholds

if TYPE_CHECKING:
    from consumer.corrections import Correction
    from consumer.settings import Settings
    from consumer.tools.loop_sources import GradedItem

TOPIC = "topic"
SHADOW = "shadow"  # the candidate's results on KAFKA_SHADOW_RESULTS_TOPIC


class SubgroupFileError(ValueError):
    pass


def read_subgroups(path: Path) -> dict[str, str]:
    """id_alumno -> group from a CSV with those two columns (a header row)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"id_alumno", "group"} <= set(reader.fieldnames):
            raise SubgroupFileError(f"{path.name}: needs the columns id_alumno,group")
        return {row["id_alumno"]: row["group"] for row in reader if row.get("id_alumno") and row.get("group")}


async def _results(settings: Settings, source: str) -> dict[str, GradedItem]:
    from consumer.tools.loop_sources import load_results

    if source == SHADOW:
        settings = settings.model_copy(update={"results_topic": settings.shadow_results_topic})
        source = TOPIC
    loaded = await load_results(settings, source)
    if loaded.skipped:
        print(f"{loaded.skipped} unreadable result records skipped", file=sys.stderr)
    return loaded.values


async def _corrections(settings: Settings, corrections: str, erased: str) -> dict[str, Correction]:
    from consumer.tools.loop_commands import _corrections_that_count

    kept, _ = await _corrections_that_count(argparse.Namespace(corrections=corrections, erased=erased), settings)
    return kept


async def _kafka_if_needed(settings: Settings, *sources: str | None) -> None:
    from consumer.kafka import check_connection

    if any(source in (TOPIC, SHADOW) for source in sources):
        await check_connection(settings)


async def release_check_command(
    settings: Settings,
    *,
    live: str | None,
    candidate: str | None,
    corrections: str,
    subgroups: Path | None,
    thresholds: Thresholds,
    erased: str = TOPIC,
    as_json: bool = False,
) -> int:
    """0 when every criterion passes, 1 when one fails (or too few corrections), 2 when a source cannot be read."""
    from consumer.kafka import KafkaSetupError
    from consumer.tools.files import InputFileError
    from consumer.tools.release import release_check, render, render_json

    if live is None and candidate is None:
        print("release-check: give --live, --candidate or both", file=sys.stderr)
        return 2
    try:
        await _kafka_if_needed(settings, live, candidate, corrections, erased)
        groups = read_subgroups(subgroups) if subgroups is not None else None
        kept = await _corrections(settings, corrections, erased)
        live_results = await _results(settings, live) if live is not None else None
        candidate_results = await _results(settings, candidate) if candidate is not None else None
    except (InputFileError, SubgroupFileError, OSError, LookupError, KafkaSetupError, ValueError) as exc:
        print(f"release-check: {exc}", file=sys.stderr)
        return 2
    report = release_check(live_results, candidate_results, kept, subgroups=groups, thresholds=thresholds)
    sys.stdout.write(render_json(report) if as_json else render(report))
    return 0 if report.passed else 1


async def calibrate_command(
    settings: Settings,
    *,
    results: str,
    corrections: str,
    prompt_format: str,
    out: Path,
    holdout: float = 0.3,
    review_share: float | None = None,
    erased: str = TOPIC,
) -> int:
    """Fit, report, and write ``out`` (the previous CALIBRATION_FILE's other entries kept)."""
    from consumer.engine.calibration import CalibrationFileError, CalibrationTable
    from consumer.kafka import KafkaSetupError
    from consumer.spreadsheets import write_private
    from consumer.tools.calibrate import calibrate, render
    from consumer.tools.files import InputFileError

    try:
        await _kafka_if_needed(settings, results, corrections, erased)
        previous = None
        if settings.calibration_file is not None and settings.calibration_file.exists():
            previous = CalibrationTable.load(settings.calibration_file)
        kept = await _corrections(settings, corrections, erased)
        graded = await _results(settings, results)
    except (InputFileError, CalibrationFileError, OSError, LookupError, KafkaSetupError) as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        return 2
    reports = calibrate(
        graded, kept, prompt_format=prompt_format, holdout=holdout, previous=previous, review_share=review_share
    )
    sys.stdout.write(render(reports))
    if not reports:
        return 1
    table = previous or CalibrationTable(())
    for report in reports:
        table = table.with_entry(report.calibration)
    await asyncio.to_thread(write_private, out, table.dumps() + "\n")
    print(f"written to {out}; set CALIBRATION_FILE={out} on the consumers")
    return 0


def add_release_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser("release-check", help="may a candidate model replace the live one? QWK and SMD vs teachers")
    check.add_argument(
        "--live", default=TOPIC,
        help="live results: a .jsonl/.csv file, 'topic' (KAFKA_RESULTS_TOPIC), or 'none' to judge the candidate alone",
    )  # fmt: skip
    check.add_argument(
        "--candidate", default=None,
        help="candidate results: 'shadow' (KAFKA_SHADOW_RESULTS_TOPIC) or a file of texteval grade --out",
    )  # fmt: skip
    check.add_argument("--corrections", default=TOPIC, help="a .jsonl/.csv file, or 'topic' (KAFKA_CORRECTIONS_TOPIC)")
    check.add_argument("--subgroups", type=Path, default=None, help="CSV id_alumno,group (stays on this machine)")
    check.add_argument("--erased", choices=[TOPIC, "none"], default=TOPIC, help="skip erased jobs (as agreement)")
    defaults = Thresholds()
    check.add_argument("--min-qwk", type=float, default=defaults.min_qwk)
    check.add_argument("--human-qwk", type=float, default=None, help="the teachers' QWK with each other, if measured")
    check.add_argument("--max-qwk-below-human", type=float, default=defaults.max_qwk_below_human)
    check.add_argument("--max-smd", type=float, default=defaults.max_smd)
    check.add_argument("--max-subgroup-smd", type=float, default=defaults.max_subgroup_smd)
    check.add_argument("--min-subgroup-n", type=int, default=defaults.min_subgroup_n)
    check.add_argument("--min-n", type=int, default=defaults.min_n, help="fewer: 'not enough corrections', fail")
    check.add_argument("--json", action="store_true")

    def run_check(args: argparse.Namespace, settings: Settings) -> int:
        limits = Thresholds(
            min_qwk=args.min_qwk, human_qwk=args.human_qwk, max_qwk_below_human=args.max_qwk_below_human,
            max_smd=args.max_smd, max_subgroup_smd=args.max_subgroup_smd, min_subgroup_n=args.min_subgroup_n,
            min_n=args.min_n,
        )  # fmt: skip
        live = None if args.live == "none" else args.live
        return asyncio.run(
            release_check_command(
                settings, live=live, candidate=args.candidate, corrections=args.corrections,
                subgroups=args.subgroups, thresholds=limits, erased=args.erased, as_json=args.json,
            )
        )  # fmt: skip

    check.set_defaults(run=run_check)

    fit = sub.add_parser(
        "calibrate", help="fit the confidence's temperature on teachers' corrections (CALIBRATION_FILE)"
    )
    fit.add_argument("--results", default=TOPIC, help="a .jsonl file, 'topic' or 'shadow'")
    fit.add_argument("--corrections", default=TOPIC, help="a .jsonl/.csv file, or 'topic'")
    fit.add_argument(
        "--prompt-format", required=True, choices=["gemma_finetune", "chat_template"],
        help="the format the results were graded in (the file's key, with the model name)",
    )  # fmt: skip
    fit.add_argument("--out", type=Path, required=True, help="the calibration file to write")
    fit.add_argument("--holdout", type=float, default=0.3, help="share of corrections held out for the ECE")
    fit.add_argument("--review-share", type=float, default=None, help="choose REVIEW_CONFIDENCE for this share")
    fit.add_argument("--erased", choices=[TOPIC, "none"], default=TOPIC, help="skip erased jobs (as agreement)")
    fit.set_defaults(
        run=lambda a, s: asyncio.run(
            calibrate_command(
                s, results=a.results, corrections=a.corrections, prompt_format=a.prompt_format, out=a.out,
                holdout=a.holdout, review_share=a.review_share, erased=a.erased,
            )
        )
    )  # fmt: skip
