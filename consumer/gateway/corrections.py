"""``POST /jobs/{job_id}/corrections``: teachers' corrections, from the job's tenant only (contract 1.2).

Body: a JSON list of ``{item_index, nota, feedback?, comment?, corrected_at?}``
(the job comes from the path; an entry naming another job is refused): at
most ``GATEWAY_MAX_CORRECTIONS_PER_REQUEST`` entries, one per item, each
naming an item of the job (below its ``total_items`` as the gateway knows it).
Every entry is validated like a request (``consumer.corrections``); one bad
entry refuses the whole list with 422 and every error's field path
(``["body", 3, "nota"]``), never the submitted text, and nothing is
produced, so a teacher's form is fixed and sent again whole. A valid list
is produced to the corrections topic keyed by ``job_id``: 202 with the count.

Who may correct: the job's tenant. Another tenant's job is answered as an
unknown one (404, as on every route); an operator's key sees the job but
is refused (403): a correction is a teacher's word on a grade. An open
gateway (no keys, development) has no tenants and takes any.

Agreement: the gateway holds the job's results in memory, so each accepted
correction is counted in ``texteval_gateway_corrections_total{agreement}``
against the model's grade for that item (exact, within one, off by two or
more; unknown when the gateway holds no grade for it: an error result, an
item not graded yet, or a job it met after a restart past the results). The
drift alert on teachers' agreement reads it (deploy/prometheus/alerts.yml).

Contract 1.3: an entry whose ``corrected_at`` lies more than a minute in
the future is invalid like any other (422, ``["body", i, "corrected_at"]``),
and every accepted correction also produces its decision record to the
decisions topic, keyed by ``job_id``: ``by`` names the caller without the
key (``<tenant>:<key id>``, the key id being the short digest prefix the
audit log uses; ``anonymous`` on an open gateway), and ``previous_nota`` is
the grade the item had before it as this gateway knows it: the last
correction it applied to that item while it holds the job (``AppliedGrades``),
else the model's grade it holds, else null. A correction applied through
another replica, or before this gateway restarted, is not known here; the
records on the topic, in order, are the full history (``texteval explain``).

The route is ``consumer/gateway/routes/corrections.py``; the rules are here.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Protocol

from consumer.contract import CorrectionRecord, utc_now
from consumer.corrections import Correction, InvalidCorrection, correction_by, correction_record, parse_correction
from consumer.gateway.jobs import JobRecord, results_rows

logger = logging.getLogger(__name__)


class Agreement(StrEnum):
    """The label of texteval_gateway_corrections: a teacher's grade against the
    model's for the same item (agreement_of, below)."""

    EXACT = "exact"
    WITHIN_ONE = "within_one"  # one point apart: the "adjacent agreement" of essay scoring
    OFF = "off"  # two or more apart
    UNKNOWN = "unknown"  # the gateway holds no grade for the item


MAX_ERRORS_SHOWN = 20  # as POST /evaluate's 422


class CorrectingCaller(Protocol):
    @property
    def key_id(self) -> str: ...

    @property
    def tenant(self) -> str | None: ...

    @property
    def admin(self) -> bool: ...


def parse_corrections(
    body: bytes, job_id: str, *, max_items: int, total_items: int, max_entries: int
) -> list[Correction] | list[dict[str, Any]]:
    """The corrections, or the FastAPI-shaped errors (a list of dicts) when any entry is bad.

    ``total_items`` is the job's size as the gateway knows it (0: unknown);
    an index past it names no result. At most ``max_entries`` entries
    (GATEWAY_MAX_CORRECTIONS_PER_REQUEST), each of another item.
    """
    try:
        entries = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        return [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]
    if not isinstance(entries, list) or not entries:
        return [{"loc": ["body"], "msg": "a non-empty JSON list of corrections", "type": "list_type"}]
    if len(entries) > max_entries:
        return [{"loc": ["body"], "msg": f"at most {max_entries} corrections per request", "type": "too_long"}]
    corrections: list[Correction] = []
    errors: list[dict[str, Any]] = []
    seen: set[int] = set()
    for index, entry in enumerate(entries):
        try:
            correction = parse_correction(entry, job_id=job_id, max_items=max_items, loc=("body", index))
        except InvalidCorrection as exc:
            errors.extend(exc.errors)
            continue
        problem = _item_problem(correction.item_index, total_items, seen)
        if problem is not None:
            errors.append({"loc": ["body", index, "item_index"], **problem})
            continue
        seen.add(correction.item_index)
        corrections.append(correction)
    return errors[:MAX_ERRORS_SHOWN] if errors else corrections


def _item_problem(item_index: int, total_items: int, seen: set[int]) -> dict[str, str] | None:
    """Each correction names an item of the job (its size as the gateway knows it; unknown yet:
    none does), and one item once per request (every entry is two Kafka records)."""
    if item_index >= total_items:
        return {"msg": f"the job has {total_items} items" if total_items else "the job's size is not known yet",
                "type": "less_than"}  # fmt: skip
    if item_index in seen:
        return {"msg": "one correction per item per request", "type": "duplicate"}
    return None


def agreement_of(model_nota: int | None, nota: int) -> Agreement:
    """A teacher's grade against the model's (None: the model's is not known)."""
    if model_nota is None:
        return Agreement.UNKNOWN
    distance = abs(model_nota - nota)
    return Agreement.EXACT if distance == 0 else Agreement.WITHIN_ONE if distance == 1 else Agreement.OFF


def model_grades(record: JobRecord) -> dict[int, int | None]:
    """The grade the model gave each item the gateway holds a result of (None: an error result)."""
    grades: dict[int, int | None] = {}
    for row in results_rows(record):
        index, nota = row["item_index"], row["nota"]
        if isinstance(index, int):  # always: results_rows validated it as an ItemSummary
            grades[index] = nota if isinstance(nota, int) else None
    return grades


def by_of(caller: CorrectingCaller) -> str:
    """A correction record's ``by`` for a gateway caller: never the key."""
    if caller.tenant is None and not caller.admin:
        return correction_by(tenant=None, key_id=None)  # an open gateway: "anonymous"
    return correction_by(tenant=caller.tenant, key_id=caller.key_id, admin=caller.admin)


class AppliedGrades:
    """item_index -> the last correction applied through this gateway, per job (its grade, the
    teacher's feedback and comment: what the results files carry), for as long as the gateway
    holds the job: an entry lives as long as its ``JobRecord`` (dropped by TTL, memory pressure
    or an erase, it is collected and the entry goes with it)."""

    def __init__(self) -> None:
        self._grades: weakref.WeakKeyDictionary[JobRecord, dict[int, Correction]] = weakref.WeakKeyDictionary()

    def of(self, record: JobRecord) -> dict[int, Correction]:
        return self._grades.setdefault(record, {})

    def __len__(self) -> int:
        return len(self._grades)


def decision_records(
    corrections: Sequence[Correction],
    model: dict[int, int | None],
    applied: dict[int, Correction],
    by: str,
) -> list[CorrectionRecord]:
    """The records of corrections applied in this order; ``applied`` is updated as they go
    (two corrections of one item in one list: the second's previous grade is the first's)."""
    now = utc_now()
    records = []
    for correction in corrections:
        index = correction.item_index
        previous = applied[index].nota if index in applied else model.get(index)
        records.append(correction_record(correction, previous_nota=previous, by=by, applied_at=now))
        applied[index] = correction
    return records
