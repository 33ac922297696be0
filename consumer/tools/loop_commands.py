"""The corrections loop's commands: ``correct``, ``agreement``, ``export-training`` (contract 1.2, 1.3).

Their options are declared with the other commands in ``consumer/tools/cli.py``;
the work is here, imported when a command runs, so ``texteval --help`` stays quick.

``agreement`` and ``export-training`` skip erased jobs (contract 1.3),
whatever their sources: the erasures are read from Kafka (``--erased
topic``, the default) even when results and corrections come from files, so
a file kept from before an erase cannot bring the job back into a training
set. ``--erased none`` skips that check on purpose, and says so.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from consumer.corrections import Correction, ErasedSkipped
    from consumer.settings import Settings
    from consumer.tools.loop_sources import Loaded

T = TypeVar("T")

TOPIC = "topic"  # a source option's value for the configured topic (loop_sources.TOPIC)
NONE = "none"
SOURCE_HELP = "a file ({kinds}), or 'topic' for {setting} read from the beginning"
ERASED_HELP = (
    "'topic': skip erased jobs, read from KAFKA_DECISIONS_TOPIC (erased records) and KAFKA_CONTROL_TOPIC "
    "(erase commands); 'none': do not check (said on stderr)"
)


@dataclass(frozen=True, slots=True)
class Sources:
    """Where ``agreement`` and ``export-training`` read: a file each, or ``TOPIC``; ``erased``: ``TOPIC``/``NONE``."""

    results: str
    corrections: str
    requests: str | None
    erased: str


async def correct_command(settings: Settings, path: Path) -> int:
    from consumer.kafka import check_connection
    from consumer.tools.correct import produce_corrections, read_correction_file
    from consumer.tools.files import InputFileError

    try:
        batch = read_correction_file(path, settings.jobs.max_items_per_job)
    except (InputFileError, OSError) as exc:
        print(f"correct: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    await check_connection(settings)  # KafkaSetupError: said by the command line, exit 2
    await produce_corrections(settings, batch, path.name)
    print(f"{len(batch.valid)} corrections produced to {settings.kafka.corrections_topic}, "
          f"each with its decision record on {settings.kafka.decisions_topic}")  # fmt: skip
    for rejected in batch.rejected:
        print(f"line {rejected.line}: {rejected.reason.value}: {rejected.detail}", file=sys.stderr)
    if batch.rejected:
        print(f"{len(batch.rejected)} invalid, sent to {settings.kafka.corrections_dlt_topic}", file=sys.stderr)
        return 1
    return 0


async def _check_kafka(settings: Settings, sources: Sources) -> None:
    """Before reading any topic: which setting is wrong, rather than a client's retry loop
    (``KafkaSetupError``: said by the command line, exit 2)."""
    from consumer.kafka import check_connection

    if TOPIC in (sources.results, sources.corrections, sources.requests, sources.erased):
        await check_connection(settings)


def _said(what: str, loaded: Loaded[T]) -> T:
    """The values; unreadable records of a topic are skipped, and said so."""
    if loaded.skipped:
        print(f"{loaded.skipped} unreadable {what} records skipped", file=sys.stderr)
    return loaded.values


async def _corrections_that_count(settings: Settings, sources: Sources) -> tuple[dict[str, Correction], ErasedSkipped]:
    """The correction applied last per result, without erased jobs' (contract 1.3)."""
    from consumer.corrections import ErasedSkipped, latest_by_item, without_erased
    from consumer.tools.loop_sources import load_corrections, load_erased_jobs

    loaded = await load_corrections(settings, sources.corrections)
    if loaded.future:
        print(f"{loaded.future} corrections dated in the future when written ignored (contract 1.3)",
              file=sys.stderr)  # fmt: skip
    applied: list[Correction] = _said("corrections", loaded)
    latest = latest_by_item(applied)
    if sources.erased == NONE:
        print("erased jobs not checked (--erased none)", file=sys.stderr)
        return latest, ErasedSkipped(checked=False)
    try:
        erased = _said("control", await load_erased_jobs(settings))
    except LookupError as exc:  # no decisions (or control) topic: erasures cannot be checked
        raise LookupError(f"{exc}: erased jobs cannot be checked (create it with deploy/kafka/create-topics.sh, "
                          "or pass --erased none to go on without the check)") from None  # fmt: skip
    kept, jobs, items = without_erased(latest, erased)
    return kept, ErasedSkipped(jobs=jobs, items=items)


async def agreement_command(settings: Settings, sources: Sources, *, as_json: bool) -> int:
    from consumer.tools.agreement import agreement, render, render_json
    from consumer.tools.files import InputFileError
    from consumer.tools.loop_sources import load_request_items, load_results

    await _check_kafka(settings, sources)
    try:
        corrections, skipped = await _corrections_that_count(settings, sources)
        results = _said("results", await load_results(settings, sources.results))
        items = None
        if sources.requests is not None:
            items = _said("requests", await load_request_items(settings, sources.requests, corrections.keys()))
    except (InputFileError, OSError, LookupError) as exc:
        print(f"agreement: {exc}", file=sys.stderr)
        return 2
    report = agreement(results, corrections, items, erased=skipped)
    sys.stdout.write(render_json(report) if as_json else render(report))
    return 0


async def export_training_command(settings: Settings, sources: Sources, out: Path) -> int:
    from consumer.spreadsheets import write_private
    from consumer.tools.files import InputFileError
    from consumer.tools.loop_sources import load_request_items, load_results
    from consumer.tools.training_export import build_export, summary

    if sources.requests is None:  # the command's default is the topic: only a caller's mistake
        raise ValueError("export-training needs the requests (a file or the topic)")
    await _check_kafka(settings, sources)
    try:
        corrections, skipped = await _corrections_that_count(settings, sources)
        results = _said("results", await load_results(settings, sources.results))
        # Only the kept corrections' texts are read: an erased job's texts are never loaded.
        items = _said("requests", await load_request_items(settings, sources.requests, corrections.keys()))
    except (InputFileError, OSError, LookupError) as exc:
        print(f"export-training: {exc}", file=sys.stderr)
        return 2
    export = build_export(
        corrections, results, items, feedback_max_chars=settings.engine.feedback_chars, erased=skipped
    )
    # The file holds students' texts: owner-only, as the results files.
    await asyncio.to_thread(write_private, out, export.jsonl())
    print(f"{summary(export)}; written to {out}")
    return 0
