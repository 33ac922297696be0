"""A job's results as rows and as a file (``GET /jobs/{id}/results``).

The rows are read from the job's stored events (kept once, as sent). Parsing
2,000 results, or writing them as a CSV, is tens of milliseconds of the event
loop, so 64 concurrent downloads of one job would starve every other request
(``/health`` among them): the rows of the last few jobs asked for, and their
machine-readable files, are kept, keyed by how many events the job had, and
rebuilt only when a new event arrived.

``results_file`` is the one place a results file is built from rows.
"""

from __future__ import annotations

import json
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from consumer.gateway.catalogues import LANGS
from consumer.gateway.jobs import JobRecord, ParsedResults, results_rows
from consumer.spreadsheets import csv_text

# 1.2: confidence and needs_review (empty when absent); nota_probabilities in JSONL.
# 1.3: review_reasons, `;`-separated in the CSV (a list in JSONL).
RESULT_COLUMNS = (
    "job_id", "item_index", "id_alumno", "status", "nota", "feedback", "confidence", "needs_review", "review_reasons",
)  # fmt: skip
FORMATS = ("csv", "jsonl", "xlsx")  # xlsx: the teachers' file only (consumer/gateway/exports.py)
LAYOUTS = ("machine", "gradebook")  # the prototype's columns, or the teachers' file
Row = dict[str, object]


class RowsCache:
    """The rows of the ``recent_jobs`` jobs asked for last, kept on their records (read only, shared),
    and their machine-readable files as served: a file is built once per new event, not once per
    download (a 2,000-row CSV is tens of milliseconds of the event loop). A job dropped from the
    store (TTL, memory, erase) drops its rows and files with it (``JobStore._drop``)."""

    def __init__(self, recent_jobs: int = 8) -> None:  # not GATEWAY_MAX_JOBS: the jobs whose rows stay parsed
        self._recent_jobs = recent_jobs
        # Weak: a record dropped from the store is not kept alive here.
        self._recent: OrderedDict[int, weakref.ref[JobRecord]] = OrderedDict()

    def rows(self, record: JobRecord) -> list[Row]:
        return self._parsed(record).rows

    def file(self, record: JobRecord, fmt: str, *, missing: int = 0) -> ResultsFile:
        """``results_file`` of the job's rows, built once while no new event arrives."""
        files = self._parsed(record).files
        file = files.get((fmt, missing))
        if not isinstance(file, ResultsFile):
            built = results_file(record.job_id, self.rows(record), fmt, missing=missing)
            text = built.text.encode("utf-8") if isinstance(built.text, str) else built.text  # encoded once, too
            file = files[(fmt, missing)] = ResultsFile(text, built.media_type, built.filename)
        return file

    def _parsed(self, record: JobRecord) -> ParsedResults:
        parsed = record.rows_cache
        if parsed is None or parsed.events != len(record.events):
            parsed = record.rows_cache = ParsedResults(len(record.events), results_rows(record))
        self._recent[id(record)] = weakref.ref(record)
        self._recent.move_to_end(id(record))
        while len(self._recent) > self._recent_jobs:
            _, ref = self._recent.popitem(last=False)
            old = ref()
            if old is not None:
                old.rows_cache = None
        return parsed


@dataclass(frozen=True, slots=True)
class ResultsFile:
    text: str | bytes
    media_type: str
    filename: str


def results_problem(fmt: str, lang: str, layout: str) -> dict[str, object] | None:
    """The 422 problem of a results request's query, or None."""
    for name, value, allowed in (("format", fmt, FORMATS), ("lang", lang, LANGS), ("layout", layout, LAYOUTS)):
        if value not in allowed:
            return {"loc": ["query", name], "msg": f"use {' or '.join(allowed)}", "type": "enum"}
    return None


def results_file(job_id: str, rows: Sequence[Row], fmt: str, *, missing: int = 0) -> ResultsFile:
    """The job's results file. ``missing`` > 0 (a finished job of which this gateway holds only
    part): the file name says ``incomplete`` so a teacher sees it before opening it."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)
    if missing:
        name += ".incomplete"
    if fmt == "jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        return ResultsFile(text, "application/x-ndjson", f"{name}.jsonl")
    flat = ({**row, "review_reasons": ";".join(row.get("review_reasons") or ())} for row in rows)  # type: ignore[arg-type]
    return ResultsFile(csv_text(RESULT_COLUMNS, flat), "text/csv; charset=utf-8", f"{name}.csv")
