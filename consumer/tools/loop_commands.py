"""The corrections loop's commands: ``correct``, ``agreement``, ``export-training`` (contract 1.2, 1.3).

Registered on ``texteval``'s parser by ``add_loop_commands``; their work is
imported when a command runs, so ``texteval --help`` stays quick.

``agreement`` and ``export-training`` skip erased jobs (contract 1.3),
whatever their sources: the erasures are read from Kafka (``--erased
topic``, the default) even when results and corrections come from files, so
a file kept from before an erase cannot bring the job back into a training
set. ``--erased none`` skips that check on purpose, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
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


async def _correct(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.kafka import KafkaSetupError, check_connection
    from consumer.tools.correct import produce_corrections, read_correction_file
    from consumer.tools.files import InputFileError

    path = Path(args.file)
    try:
        batch = read_correction_file(path, settings.max_items_per_job)
    except (InputFileError, OSError) as exc:
        print(f"correct: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    try:
        await check_connection(settings)
    except KafkaSetupError as exc:
        print(f"correct: cannot use Kafka: {exc}", file=sys.stderr)
        return 2
    await produce_corrections(settings, batch, path.name)
    print(f"{len(batch.valid)} corrections produced to {settings.corrections_topic}, "
          f"each with its decision record on {settings.decisions_topic}")  # fmt: skip
    for rejected in batch.rejected:
        print(f"line {rejected.line}: {rejected.reason.value}: {rejected.detail}", file=sys.stderr)
    if batch.rejected:
        print(f"{len(batch.rejected)} invalid, sent to {settings.corrections_dlt_topic}", file=sys.stderr)
        return 1
    return 0


async def _check_kafka(settings: Settings, args: argparse.Namespace) -> None:
    """Before reading any topic: which setting is wrong, rather than a client's retry loop."""
    from consumer.kafka import check_connection

    if TOPIC in (args.results, args.corrections, args.requests, args.erased):
        await check_connection(settings)


def _said(what: str, loaded: Loaded[T]) -> T:
    """The values; unreadable records of a topic are skipped, and said so."""
    if loaded.skipped:
        print(f"{loaded.skipped} unreadable {what} records skipped", file=sys.stderr)
    return loaded.values


async def _corrections_that_count(
    args: argparse.Namespace, settings: Settings
) -> tuple[dict[str, Correction], ErasedSkipped]:
    """The correction applied last per result, without erased jobs' (contract 1.3)."""
    from consumer.corrections import ErasedSkipped, latest_by_item, without_erased
    from consumer.tools.loop_sources import load_corrections, load_erased_jobs

    loaded = await load_corrections(settings, args.corrections)
    if loaded.future:
        print(f"{loaded.future} corrections dated in the future when written ignored (contract 1.3)",
              file=sys.stderr)  # fmt: skip
    applied: list[Correction] = _said("corrections", loaded)
    latest = latest_by_item(applied)
    if args.erased == NONE:
        print("erased jobs not checked (--erased none)", file=sys.stderr)
        return latest, ErasedSkipped(checked=False)
    try:
        erased = _said("control", await load_erased_jobs(settings))
    except LookupError as exc:  # no decisions (or control) topic: erasures cannot be checked
        raise LookupError(f"{exc}: erased jobs cannot be checked (create it with deploy/kafka/create-topics.sh, "
                          "or pass --erased none to go on without the check)") from None  # fmt: skip
    kept, jobs, items = without_erased(latest, erased)
    return kept, ErasedSkipped(jobs=jobs, items=items)


async def _agreement(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.kafka import KafkaSetupError
    from consumer.tools.agreement import agreement, render, render_json
    from consumer.tools.files import InputFileError
    from consumer.tools.loop_sources import load_request_items, load_results

    try:
        await _check_kafka(settings, args)
        corrections, skipped = await _corrections_that_count(args, settings)
        results = _said("results", await load_results(settings, args.results))
        items = None
        if args.requests is not None:
            items = _said("requests", await load_request_items(settings, args.requests, corrections.keys()))
    except (InputFileError, OSError, LookupError, KafkaSetupError) as exc:
        print(f"agreement: {exc}", file=sys.stderr)
        return 2
    report = agreement(results, corrections, items, erased=skipped)
    sys.stdout.write(render_json(report) if args.json else render(report))
    return 0


async def _export_training(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.kafka import KafkaSetupError
    from consumer.spreadsheets import write_private
    from consumer.tools.files import InputFileError
    from consumer.tools.loop_sources import load_request_items, load_results
    from consumer.tools.training_export import build_export, summary

    try:
        await _check_kafka(settings, args)
        corrections, skipped = await _corrections_that_count(args, settings)
        results = _said("results", await load_results(settings, args.results))
        # Only the kept corrections' texts are read: an erased job's texts are never loaded.
        items = _said("requests", await load_request_items(settings, args.requests, corrections.keys()))
    except (InputFileError, OSError, LookupError, KafkaSetupError) as exc:
        print(f"export-training: {exc}", file=sys.stderr)
        return 2
    export = build_export(corrections, results, items, feedback_max_chars=settings.feedback_chars, erased=skipped)
    # The file holds students' texts: owner-only, as the results files.
    await asyncio.to_thread(write_private, Path(args.out), export.jsonl())
    print(f"{summary(export)}; written to {args.out}")
    return 0


def add_loop_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    correct = sub.add_parser("correct", help="produce teachers' corrections (JSONL or CSV) to the corrections topic")
    correct.add_argument("file", help="JSONL or CSV of {job_id, item_index, nota, feedback?, comment?, corrected_at?}")
    correct.set_defaults(run=lambda a, s: asyncio.run(_correct(a, s)))

    def sources(parser: argparse.ArgumentParser, *, requests_default: str | None) -> None:
        parser.add_argument(
            "--results", default=TOPIC,
            help=SOURCE_HELP.format(kinds=".jsonl or .csv", setting="KAFKA_RESULTS_TOPIC"),
        )  # fmt: skip
        parser.add_argument(
            "--corrections", default=TOPIC,
            help=SOURCE_HELP.format(kinds=".jsonl or .csv", setting="KAFKA_CORRECTIONS_TOPIC"),
        )  # fmt: skip
        parser.add_argument(
            "--requests", default=requests_default,
            help=SOURCE_HELP.format(kinds=".jsonl of requests with job_id", setting="KAFKA_REQUESTS_TOPIC"),
        )  # fmt: skip
        parser.add_argument("--erased", choices=[TOPIC, NONE], default=TOPIC, help=ERASED_HELP)

    agree = sub.add_parser(
        "agreement", help="model vs teachers: exact, within-one, quadratic weighted kappa, confusion matrix"
    )
    sources(agree, requests_default=None)
    agree.add_argument("--json", action="store_true", help="print the figures as JSON")
    agree.set_defaults(run=lambda a, s: asyncio.run(_agreement(a, s)))

    export = sub.add_parser("export-training", help="corrected items in the fine-tune's training format (JSONL)")
    sources(export, requests_default=TOPIC)
    export.add_argument("--out", required=True, help="the JSONL to write")
    export.set_defaults(run=lambda a, s: asyncio.run(_export_training(a, s)))
