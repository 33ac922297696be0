"""What the corrections loop reads: results, corrections and requests, from a file or a topic.

``texteval agreement`` and ``texteval export-training`` join a job's
results with the teachers' corrections (and, for export, the request that
holds the student's text). Each source is a file (JSONL, or CSV for results
and corrections) or the configured topic, read from the beginning up to its
end at the time of reading (``TopicReader.to_end``), without a consumer group.

Readers of at-least-once streams keep one result per ``result_id``; a
correction counts once per result (the one applied last, ``latest_by_item``).
Student texts are read only for the items asked for (``wanted``): a requests
topic holds whole terms of texts, and export needs a handful of them.

Erased jobs (contract 1.3) leave the loop: ``load_erased_jobs`` reads the
``erased`` decision records (kept ``DECISIONS_RETENTION_MS``) and the erase
commands of the control topic (a day; they cover an erase whose record could
not be written), and the commands skip those jobs' corrections
(``consumer.corrections.without_erased``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import ValidationError

from consumer.contract import (
    ControlAction,
    ControlCommand,
    EvaluationRequest,
    EvaluationResult,
    Item,
    result_id,
    utc_now,
)
from consumer.corrections import Correction, InvalidCorrection, parse_correction
from consumer.decisions import erased_jobs, parse_record
from consumer.erasure import honoured
from consumer.kafka import Start, TopicReader, client_kwargs
from consumer.settings import Settings
from consumer.tools.files import InputFileError, read_jsonl
from consumer.validation import validation_problems

if TYPE_CHECKING:
    from consumer.kafka import Record

TOPIC = "topic"  # the source option's value that means "the configured topic"


@dataclass(frozen=True, slots=True)
class GradedItem:
    """What the loop needs of one result: the grade given and how sure the model was."""

    job_id: str
    item_index: int
    ok: bool
    nota: int | None
    feedback: str | None
    model: str
    prompt_sha256: str
    confidence: float | None  # contract 1.2; None on results written before it
    # Read for the release check (subgroups by student) and calibration (the distribution):
    id_alumno: str = ""
    probabilities: tuple[float, ...] | None = None  # contract 1.2 nota_probabilities; None when absent

    @property
    def result_id(self) -> str:
        return result_id(self.job_id, self.item_index)


T = TypeVar("T")


@dataclass
class Loaded(Generic[T]):
    """What a source gave: the values, and how many records were skipped as unreadable."""

    values: T
    skipped: int = 0
    future: int = 0  # corrections: on the topic with a corrected_at in the future when written (contract 1.3)


def _confidence(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str) or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0.0 <= number <= 1.0 else None


def graded_item(data: dict[str, Any]) -> GradedItem:
    """One result message (a dict decoded from JSON); ValidationError if it is not one."""
    result = EvaluationResult.model_validate(data)
    return GradedItem(
        job_id=result.job_id,
        item_index=result.item_index,
        ok=result.error is None,
        nota=result.nota,
        feedback=result.feedback,
        model=result.model,
        prompt_sha256=result.prompt_sha256,
        confidence=_confidence(data.get("confidence")),
        id_alumno=result.id_alumno,
        probabilities=None if result.nota_probabilities is None else tuple(result.nota_probabilities),
    )


def _graded_from_csv_row(row: dict[str, str]) -> GradedItem:
    # The flat row of consumer.tools.files.write_results (plus `confidence`
    # when the writer has it): empty cells are nulls.
    status = row.get("status", "")
    nota = row.get("nota", "")
    return GradedItem(
        job_id=row.get("job_id", ""),
        item_index=int(row.get("item_index", "")),
        ok=status == "ok",
        nota=int(nota) if status == "ok" and nota != "" else None,
        feedback=(row.get("feedback") or None) if status == "ok" else None,
        model=row.get("model", ""),
        prompt_sha256=row.get("prompt_sha256", ""),
        confidence=_confidence(row.get("confidence")),
        id_alumno=row.get("id_alumno", ""),
    )


def _results_csv(path: Path) -> list[GradedItem]:
    items = []
    with path.open(newline="", encoding="utf-8-sig") as handle:  # as correction_records
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                items.append(_graded_from_csv_row(row))
            except ValueError:
                raise InputFileError(f"{path.name} line {number}: not a result row") from None
    return items


async def _topic_values(settings: Settings, topic: str, on_value: Callable[[Record], None]) -> None:
    reader = TopicReader(
        client_kwargs(settings), [topic], start=Start.BEGINNING, max_message_bytes=settings.kafka.max_message_bytes
    )
    async with reader:
        await reader.to_end(on_value)


def _decode(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


async def load_results(settings: Settings, source: str) -> Loaded[dict[str, GradedItem]]:
    """result_id -> the result (the first copy of each; the copies are the same grade)."""
    loaded: Loaded[dict[str, GradedItem]] = Loaded({})

    def keep(data: Any) -> None:
        try:
            item = graded_item(data) if isinstance(data, dict) else None
        except ValidationError:
            item = None
        if item is None:
            loaded.skipped += 1
            return
        loaded.values.setdefault(item.result_id, item)

    if source == TOPIC:
        await _topic_values(settings, settings.kafka.results_topic, lambda record: keep(_decode(record.value)))
        return loaded
    path = Path(source)
    if path.suffix.lower() == ".csv":
        for item in _results_csv(path):
            loaded.values.setdefault(item.result_id, item)
        return loaded
    for _, data in read_jsonl(path, where=lambda n: f"{path.name} line {n}"):
        keep(data)
    return loaded


def _csv_cell(name: str, cell: str | None) -> object:
    # CSV has only text: the integer columns are converted when they are
    # integers (else validation names the field); empty cells are absent.
    if cell is None or cell.strip() == "":
        return None
    if name in ("item_index", "nota", "schema_version"):
        text = cell.strip()
        if text.lstrip("-").isdigit():
            return int(text)
    return cell


def correction_records(path: Path) -> list[tuple[int, bytes, Any]]:
    """(line number, the line as given, its decoded value or None when not
    JSON) for every non-blank line of a JSONL or every row of a CSV.

    Not ``files.read_jsonl``: a bad line here is dead-lettered with its
    reason, and the rest of the file still goes out.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # utf-8-sig: a spreadsheet saved as "CSV UTF-8" starts with a BOM,
        # which would otherwise become part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            records = []
            for number, row in enumerate(csv.DictReader(handle), start=2):
                value = {name: cell for name, raw in row.items() if name and (cell := _csv_cell(name, raw)) is not None}
                records.append((number, json.dumps(row, ensure_ascii=False).encode(), value))
            return records
    if suffix != ".jsonl":
        raise InputFileError(f"{path.name}: unknown file type (use .jsonl or .csv)")
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if line.strip():
            records.append((number, line, _decode(line)))
    return records


def written_at(record: Record) -> datetime:
    """When the broker took a record (LogAppendTime on the topics create-topics.sh makes), else now."""
    timestamp = record.timestamp
    return datetime.fromtimestamp(timestamp / 1000, UTC) if isinstance(timestamp, int) and timestamp > 0 else utc_now()


async def load_corrections(settings: Settings, source: str) -> Loaded[list[Correction]]:
    """Every valid correction, in the order applied. On the topic an invalid one
    is skipped and counted (only a writer that bypasses `texteval correct` and
    the gateway can put one there), and so is one whose ``corrected_at`` lay in
    the future when it was written (``future``); in a file either is an error
    naming the line."""
    loaded: Loaded[list[Correction]] = Loaded([])

    def keep(record: Record) -> None:
        try:
            loaded.values.append(parse_correction(_decode(record.value), now=written_at(record)))
        except InvalidCorrection as exc:  # not JSON (None), not a correction, or dated in the future
            if exc.in_future:
                loaded.future += 1
            else:
                loaded.skipped += 1

    if source == TOPIC:
        await _topic_values(settings, settings.kafka.corrections_topic, keep)
        return loaded
    now = utc_now()
    for number, _, data in correction_records(Path(source)):
        try:
            loaded.values.append(parse_correction(data, now=now))
        except InvalidCorrection as exc:
            raise InputFileError(f"{Path(source).name} line {number}: {exc.problems}") from None
    return loaded


async def load_request_items(settings: Settings, source: str, wanted: Collection[str]) -> Loaded[dict[str, Item]]:
    """result_id -> the item graded for it, for the result ids in ``wanted`` only.

    A request on the topic without ``job_id`` is the job the consumer named
    ``<topic>:<partition>:<offset>`` (contract, "Request"). A later request
    under the same id is a conflict the consumer dead-letters, so the first wins.
    """
    loaded: Loaded[dict[str, Item]] = Loaded({})

    def keep(data: Any, default_job_id: str | None) -> None:
        try:
            request = EvaluationRequest.model_validate(data, context={"max_items": settings.jobs.max_items_per_job})
        except ValidationError:
            loaded.skipped += 1  # dead-lettered by the consumer: it graded nothing of it
            return
        job_id = request.job_id or default_job_id
        if job_id is None:
            loaded.skipped += 1
            return
        for index, item in enumerate(request.items):
            rid = result_id(job_id, index)
            if rid in wanted:
                loaded.values.setdefault(rid, item)

    if source == TOPIC:
        await _topic_values(
            settings,
            settings.kafka.requests_topic,
            lambda record: keep(_decode(record.value), f"{record.topic}:{record.partition}:{record.offset}"),
        )
        return loaded
    path = Path(source)
    for number, data in read_jsonl(path, where=lambda n: f"{path.name} line {n}"):
        if not isinstance(data, dict) or not isinstance(data.get("job_id"), str):
            raise InputFileError(f"{path.name} line {number}: a request with its job_id is needed to join")
        try:
            EvaluationRequest.model_validate(data, context={"max_items": settings.jobs.max_items_per_job})
        except ValidationError as exc:
            raise InputFileError(f"{path.name} line {number}: {validation_problems(exc)}") from None
        keep(data, None)
    return loaded


async def load_erased_jobs(settings: Settings) -> Loaded[set[str]]:
    """The job ids erased: ``erased`` records of the decisions topic and honoured erase
    commands of the control topic (``skipped``: unreadable control commands)."""
    loaded: Loaded[set[str]] = Loaded(set())

    def from_decisions(record: Record) -> None:
        # Most records are grades: only a value that names "erased" is parsed.
        if record.value and b'"erased"' in record.value:
            loaded.values |= erased_jobs([parse_record(record.value)])

    def from_control(record: Record) -> None:
        try:
            command = ControlCommand.model_validate_json(record.value or b"")
        except ValidationError:
            loaded.skipped += 1
            return
        if command.action is ControlAction.ERASE and honoured(command):
            loaded.values.add(command.job_id)

    await _topic_values(settings, settings.kafka.decisions_topic, from_decisions)
    await _topic_values(settings, settings.kafka.control_topic, from_control)
    return loaded
