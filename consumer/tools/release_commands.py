"""``texteval release-check`` and ``texteval calibrate``: the commands' work, as plain functions.

Each command is one async function taking typed arguments (``release_check_command``,
``calibrate_command``); ``consumer/tools/cli.py`` registers them.

Sources are those of the corrections loop (``consumer.tools.loop_sources``):
a results file (``texteval grade --out``, JSONL or CSV) or ``topic``; the
candidate may also be ``shadow``, ``KAFKA_SHADOW_RESULTS_TOPIC`` read from the
beginning. Corrections count once per result (the latest), erased jobs left
out as in ``texteval agreement``. The subgroup file (``id_alumno,group``
CSV) is read here and goes nowhere else: its groups appear in the report only.
"""

from __future__ import annotations

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
        settings = settings.with_(results_topic=settings.kafka.shadow_results_topic)
        source = TOPIC
    loaded = await load_results(settings, source)
    if loaded.skipped:
        print(f"{loaded.skipped} unreadable result records skipped", file=sys.stderr)
    return loaded.values


async def _corrections(settings: Settings, corrections: str, erased: str) -> dict[str, Correction]:
    from consumer.tools.loop_commands import Sources, _corrections_that_count

    kept, _ = await _corrections_that_count(settings, Sources(TOPIC, corrections, None, erased))
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
        if settings.engine.calibration_file is not None and settings.engine.calibration_file.exists():
            previous = CalibrationTable.load(settings.engine.calibration_file)
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
