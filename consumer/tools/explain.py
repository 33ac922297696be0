"""``texteval explain RESULT_ID [--json]``: why a grade is what it is (contract 1.3).

What it prints, for ``<job_id>#<index>``:

- the ``grade`` decision record (model and revision, prompt format and hash,
  sampling, the distribution, the review reasons, when), the job's
  ``correction`` records of that item in the order they were applied (the
  last one is the grade that stands), and whether the job was erased;
- while the requests topic still holds the job's request (7 days), the exact
  prompt the model was given, rebuilt as ``texteval render-prompt`` builds it
  from the item the model graded (for an answer flagged
  ``suspected_injection``, the answer without the spans addressed to the
  grader: ``Screener().screen(item).graded``), its SHA-256 and whether that
  matches the record's ``prompt_sha256``; and whether the request's text
  gives the record's ``answer_hmac`` (``DECISIONS_HMAC_KEY``).

Nothing else of the student is printed: the records hold no text and no
``id_alumno``, and the prompt is shown because the operator asked for it.
For an erased job the prompt is not shown (the erase asked for the text to
be used no more), only that the request is withheld.

Speed: the producers key every record by ``job_id``, so a job's records are
all in the one partition the key maps to (murmur2, as every Kafka client):
only that partition of the decisions topic is read (``TopicReader(key=)``),
and only that partition of the requests topic, up to the job's request.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from consumer.contract import CorrectionRecord, ErasedRecord, GradeRecord, ReviewReason

if TYPE_CHECKING:
    from consumer.contract import EvaluationRequest, Item
    from consumer.kafka import Record
    from consumer.settings import Settings

RESULT_ID = re.compile(r"^(?P<job_id>[A-Za-z0-9._:/-]{1,128})#(?P<index>0|[1-9][0-9]{0,6})$")


class PromptStatus(StrEnum):
    FOUND = "found"  # the request is still in the requests topic: the prompt is rebuilt
    NOT_RETAINED = "not_retained"  # no request under the job's key (past its retention, or never there)
    ITEM_MISSING = "item_missing"  # the request has no item at that index
    WITHHELD_ERASED = "withheld_erased"  # the job was erased: the text is not shown
    NO_GRADE_RECORD = "no_grade_record"  # corrections only: no record says how the prompt was built


@dataclass(frozen=True, slots=True)
class PromptCheck:
    status: PromptStatus
    text: str | None = None
    sha256: str | None = None
    matches_record: bool | None = None
    answer_hmac_matches: bool | None = None  # None: no grade record, or no key to check with
    removed_chars: int = 0  # of the student's answer, left out of the prompt as addressed to the grader

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "text": self.text,
            "sha256": self.sha256,
            "matches_record": self.matches_record,
            "answer_hmac_matches": self.answer_hmac_matches,
            "removed_chars": self.removed_chars,
        }


@dataclass
class Explanation:
    result_id: str
    job_id: str
    item_index: int
    grades: list[GradeRecord] = field(default_factory=list)  # distinct grade records, in topic order
    grade_copies: int = 0  # exact repeats of a grade record (at-least-once delivery)
    corrections: list[CorrectionRecord] = field(default_factory=list)  # in the order applied
    erased: ErasedRecord | None = None
    prompt: PromptCheck | None = None

    @property
    def found(self) -> bool:
        return bool(self.grades or self.corrections)

    @property
    def grade(self) -> GradeRecord | None:
        return self.grades[0] if self.grades else None

    @property
    def current_nota(self) -> int | None:
        """The grade that stands: the correction applied last, else the released grade."""
        if self.corrections:
            return self.corrections[-1].nota
        return self.grade.nota if self.grade is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "result_id": self.result_id,
            "job_id": self.job_id,
            "item_index": self.item_index,
            "grade": self.grade.model_dump(mode="json") if self.grade is not None else None,
            "grade_copies": self.grade_copies,
            "other_grade_records": [g.model_dump(mode="json") for g in self.grades[1:]],
            "corrections": [c.model_dump(mode="json") for c in self.corrections],
            "current_nota": self.current_nota,
            "erased": self.erased.model_dump(mode="json") if self.erased is not None else None,
            "prompt": self.prompt.as_dict() if self.prompt is not None else None,
        }


def split_result_id(result_id: str) -> tuple[str, int] | None:
    """``<job_id>#<index>`` -> (job_id, index); None when it is not one."""
    match = RESULT_ID.fullmatch(result_id)
    return (match["job_id"], int(match["index"])) if match else None


async def _read_partition(settings: Settings, topic: str, key: bytes, on_record: Any) -> None:
    from consumer.kafka import Start, TopicReader, client_kwargs

    reader = TopicReader(client_kwargs(settings), [topic], start=Start.BEGINNING, key=key,
                         max_message_bytes=settings.kafka.max_message_bytes)  # fmt: skip
    async with reader:
        await reader.to_end(on_record)


async def read_records(settings: Settings, job_id: str, item_index: int) -> Explanation:
    """The result's records from the job's partition of the decisions topic."""
    from consumer.decisions import parse_record

    key = job_id.encode()
    found = Explanation(f"{job_id}#{item_index}", job_id, item_index)

    def keep(record: Record) -> None:
        if record.key != key:  # another job in the same partition
            return
        parsed = parse_record(record.value)
        if isinstance(parsed, ErasedRecord):
            found.erased = found.erased or parsed
        elif parsed is None or parsed.job_id != job_id or parsed.item_index != item_index:
            return
        elif isinstance(parsed, CorrectionRecord):
            found.corrections.append(parsed)
        elif parsed in found.grades:
            found.grade_copies += 1
        else:
            found.grades.append(parsed)

    await _read_partition(settings, settings.kafka.decisions_topic, key, keep)
    return found


class _Found(Exception):
    """Ends the read of the requests partition at the job's request (the first one counts)."""


async def find_request(settings: Settings, job_id: str) -> EvaluationRequest | None:
    """The job's request, while the requests topic holds it: the first valid one under its key
    (a later, different one under the same id was dead-lettered as a conflict, never graded)."""
    from pydantic import ValidationError

    from consumer.contract import EvaluationRequest

    key = job_id.encode()
    found: list[EvaluationRequest] = []

    def keep(record: Record) -> None:
        if record.key != key or not record.value:
            return
        try:
            request = EvaluationRequest.model_validate_json(
                record.value, context={"max_items": settings.jobs.max_items_per_job}
            )
        except ValidationError:
            return
        if request.job_id in (None, job_id):
            found.append(request)
            raise _Found  # the rest of the partition (other jobs' texts) need not be read

    with contextlib.suppress(_Found):
        await _read_partition(settings, settings.kafka.requests_topic, key, keep)
    return found[0] if found else None


def _no_language_guess(text: str) -> tuple[str, float, float]:
    """A ``LanguageGuess`` that says Catalan: reasons are not asked of the screener here."""
    return "ca", 1.0, 1.0


def rebuild_prompt(settings: Settings, grade: GradeRecord, item: Item) -> PromptCheck:
    """The prompt the model was given for ``item``, as ``texteval render-prompt`` builds it,
    in the record's prompt format, checked against the record."""
    from consumer.decisions import DecisionsSetupError, answer_hmac, hmac_key
    from consumer.engine.factory import build_prompt_builder, resolve_model
    from consumer.engine.prompt import PromptBuilder
    from consumer.engine.screening import Screener
    from consumer.settings import PromptFormat

    graded, removed = item, 0
    if ReviewReason.SUSPECTED_INJECTION in grade.review_reasons:
        # The model was given the answer without the spans addressed to the grader (contract 1.3);
        # an answer not flagged was given whole. Only ``graded`` is needed, which never reads the
        # language: the screener is built without its language model (seconds of loading on a
        # busy CPU, against explain's 5-second target).
        screening = Screener(language=_no_language_guess).screen(item)
        graded, removed = screening.graded, screening.removed_chars
    if grade.prompt_format == PromptFormat.GEMMA_FINETUNE:
        builder = PromptBuilder.gemma_finetune()
    else:  # the configured model's chat template (loads its tokenizer only)
        builder = build_prompt_builder(replace(resolve_model(settings), prompt_format=PromptFormat.CHAT_TEMPLATE))
    prompt = builder.build(graded)
    try:
        hmac_matches: bool | None = answer_hmac(hmac_key(settings), item.respuesta) == grade.answer_hmac
    except DecisionsSetupError:  # no key to check with here: said, not guessed
        hmac_matches = None
    return PromptCheck(
        PromptStatus.FOUND,
        text=prompt.text,
        sha256=prompt.sha256,
        matches_record=prompt.sha256 == grade.prompt_sha256,
        answer_hmac_matches=hmac_matches,
        removed_chars=removed,
    )


async def explain(settings: Settings, job_id: str, item_index: int) -> Explanation:
    found = await read_records(settings, job_id, item_index)
    if not found.found:
        return found
    if found.erased is not None:
        found.prompt = PromptCheck(PromptStatus.WITHHELD_ERASED)
        return found
    if found.grade is None:
        found.prompt = PromptCheck(PromptStatus.NO_GRADE_RECORD)
        return found
    request = await find_request(settings, job_id)
    if request is None:
        found.prompt = PromptCheck(PromptStatus.NOT_RETAINED)
    elif item_index >= len(request.items):
        found.prompt = PromptCheck(PromptStatus.ITEM_MISSING)
    else:
        found.prompt = rebuild_prompt(settings, found.grade, request.items[item_index])
    return found


def _at(value: Any) -> str:
    return value.isoformat().replace("+00:00", "Z") if value is not None else "-"


def _yes(value: bool | None, yes: str, no: str, unknown: str) -> str:
    return unknown if value is None else yes if value else no


def render(found: Explanation, settings: Settings) -> str:
    """For a terminal: the records, then the prompt last (the only student text)."""
    lines = [f"result {found.result_id}: job {found.job_id}, item {found.item_index}"]
    for number, grade in enumerate(found.grades):
        title = "grade" if number == 0 else "another grade record (written again after a crash: see docs/privacy.md)"
        probabilities = (
            "  ".join(f"{n}: {p:.3f}" for n, p in enumerate(grade.nota_probabilities))
            if grade.nota_probabilities is not None
            else "not recorded"
        )
        confidence = f"{grade.confidence:.3f}" if grade.confidence is not None else "-"
        s = grade.sampling
        lines += [
            f"{title}: {grade.nota}, released {_at(grade.graded_at)}",
            f"  model {grade.model} (revision {grade.model_revision or 'unknown'}), "
            f"prompt format {grade.prompt_format}",
            f"  probabilities {probabilities}; confidence {confidence}",
            f"  review reasons: {', '.join(r.value for r in grade.review_reasons) or 'none'}",
            f"  sampling: temperature {s.temperature}, top_p {s.top_p}, max_tokens {s.max_tokens}, seed {s.seed}",
            f"  prompt_sha256 {grade.prompt_sha256}",
            f"  answer_hmac {grade.answer_hmac}",
        ]
    if not found.grades:
        lines.append("grade: no grade record (an error result has none, or it is past DECISIONS_RETENTION_MS)")
    if found.grade_copies:
        lines.append(f"  (the same record {found.grade_copies} more time(s): delivery is at-least-once)")
    if found.corrections:
        lines.append(f"corrections, in the order applied ({len(found.corrections)}):")
        for number, c in enumerate(found.corrections, start=1):
            before = "?" if c.previous_nota is None else str(c.previous_nota)
            lines.append(f"  {number}. {before} -> {c.nota} by {c.by}, corrected {_at(c.corrected_at)}, "
                         f"applied {_at(c.applied_at)}")  # fmt: skip
    else:
        lines.append("corrections: none")
    lines.append(f"grade that stands: {found.current_nota}")
    if found.erased is not None:
        lines.append(f"erased: yes, {_at(found.erased.at)} (the records stay; agreement and export-training skip it)")
    else:
        lines.append("erased: no")
    lines += _render_prompt(found.prompt, settings, found.item_index)
    return "\n".join(lines) + "\n"


def _render_prompt(check: PromptCheck | None, settings: Settings, item_index: int) -> list[str]:
    topic = settings.kafka.requests_topic
    if check is None:
        return []
    if check.status is PromptStatus.WITHHELD_ERASED:
        return ["prompt: not shown (the job was erased)"]
    if check.status is PromptStatus.NOT_RETAINED:
        return [f"prompt: the request is no longer in {topic} (kept 7 days): it cannot be rebuilt"]
    if check.status is PromptStatus.ITEM_MISSING:
        return [f"prompt: the job's request in {topic} has no item {item_index}"]
    if check.status is PromptStatus.NO_GRADE_RECORD:
        return ["prompt: not rebuilt (no grade record says how it was built)"]
    lines = [
        f"prompt: rebuilt from the request in {topic}",
        f"  sha256 {check.sha256}: "
        + _yes(check.matches_record, "matches the record", "DOES NOT match the record", "no record to compare"),
        "  the request's answer "
        + _yes(
            check.answer_hmac_matches,
            "gives the record's answer_hmac",
            "DOES NOT give the record's answer_hmac",
            "was not checked against answer_hmac",
        ),
    ]
    if check.removed_chars:
        lines.append(f"  {check.removed_chars} characters addressed to the grader were left out (suspected_injection)")
    lines += ["----- prompt -----", check.text or "", "----- end of prompt -----"]
    return lines


async def explain_command(settings: Settings, result_id: str, *, as_json: bool) -> int:
    from consumer.kafka import check_connection

    parts = split_result_id(result_id)
    if parts is None:
        print("explain: a result id is <job_id>#<item index> (e.g. school-42/term-1#0)", file=sys.stderr)
        return 2
    await check_connection(settings)  # KafkaSetupError: said by the command line, exit 2
    try:
        found = await explain(settings, *parts)
    except LookupError as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return 2
    if not found.found:
        erased = " (its job was erased)" if found.erased is not None else ""
        print(f"explain: no decision record of {result_id}{erased} in {settings.kafka.decisions_topic}: "
              "an unknown result id, an error result (no grade is released for it), or older than "
              "DECISIONS_RETENTION_MS", file=sys.stderr)  # fmt: skip
        return 1
    if as_json:
        sys.stdout.write(json.dumps(found.as_dict(), ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(render(found, settings))
    sys.stdout.flush()
    return 0
