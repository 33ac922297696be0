"""A job's results as a teacher takes them to a gradebook: the model's word and the teacher's, side by side.

Pure functions (no I/O, no app): the results route gives them what it holds
today, ``results_rows(record)`` (one flat row per graded item: ``item_index,
id_alumno, status, nota, feedback, confidence, needs_review, review_reasons``)
and the job's corrections by ``item_index``, and sends back the text or bytes.

A correction is anything with ``nota`` and optional ``feedback`` and
``comment`` (``consumer.corrections.Correction``, the last one applied to the
item), or a bare ``int`` grade (what ``AppliedGrades`` keeps today, without
the teacher's words). ``items`` (optional, the submitted ``curso`` and
``consigna`` by item index) adds those columns; the gateway does not keep
the request, so its files leave them out, and never carry the answer itself.

Three formats:

- **CSV** for Excel with Catalan or Spanish settings: ``;``-separated (their
  list separator; with ``,`` everything lands in column A), a UTF-8 BOM (else
  Excel reads the local code page), every cell formula-safe
  (``consumer.spreadsheets.safe_cell``: feedback is model output and
  ``id_alumno`` is anyone's text).
- **JSONL**: one object per item, stable English keys, the review reasons as
  codes and in words.
- **XLSX** (xlsxwriter): no separator or encoding to guess, every text
  written as a string (never a formula, never a link).

Column names and the review reasons are in the teacher's language
(``lang``: ``ca`` by default, ``es``, ``en``); the final grade is the
teacher's when corrected, else the model's, empty for an item the model
could not grade.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from typing import Protocol

import xlsxwriter

from consumer.gateway.catalogues import LANGS, catalogue
from consumer.spreadsheets import BOM, safe_cell

SEPARATOR = ";"

# Keys of a row (JSONL), in column order.
KEYS = (
    "id_alumno", "curso", "consigna", "model_nota", "model_feedback", "model_certainty", "review_reasons",
    "teacher_nota", "teacher_feedback", "teacher_comment", "final_nota", "status", "item_index",
)  # fmt: skip

# The words (column headers, review reasons, status, "results") are the page's:
# consumer/gateway/catalogues.py, static/i18n/{lang}.json.

MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


class TeacherWord(Protocol):
    """A correction as the exports read it (``consumer.corrections.Correction`` is one)."""

    @property
    def nota(self) -> int: ...

    @property
    def feedback(self) -> str | None: ...

    @property
    def comment(self) -> str | None: ...


Corrections = Mapping[int, "TeacherWord | int"]


def _lang(lang: str) -> str:
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}")
    return lang


def headers(lang: str) -> dict[str, str]:
    """The column headers of the files in ``lang``, by key (``KEYS``)."""
    words: dict[str, str] = catalogue(_lang(lang))["export_headers"]
    return words


def reasons_in_words(reasons: Sequence[str], lang: str = "ca") -> list[str]:
    words: dict[str, str] = catalogue(_lang(lang))["reasons"]
    return [words.get(reason, reason) for reason in reasons]


def export_rows(
    results: Sequence[Mapping[str, object]],
    corrections: Corrections,
    *,
    items: Mapping[int, Mapping[str, str]] | None = None,
) -> list[dict[str, object]]:
    """One row per result (item order), with ``KEYS`` (``curso``/``consigna`` only with ``items``).

    A correction of an item the results do not hold (not graded yet, or an
    error result) is still the teacher's word: an error result keeps it; an
    item with no result at all is not a row (nothing to put it beside)."""
    rows = []
    for result in sorted(results, key=lambda r: int(r["item_index"])):  # type: ignore[call-overload]
        index = int(result["item_index"])  # type: ignore[call-overload]
        ok = result.get("status") == "ok"
        model_nota = result.get("nota") if ok else None
        correction = corrections.get(index)
        teacher_nota: int | None
        if correction is None:
            teacher_nota, teacher_feedback, teacher_comment = None, None, None
        elif isinstance(correction, int):
            teacher_nota, teacher_feedback, teacher_comment = correction, None, None
        else:
            teacher_nota, teacher_feedback, teacher_comment = correction.nota, correction.feedback, correction.comment
        confidence = result.get("confidence")
        row: dict[str, object] = {"id_alumno": result.get("id_alumno")}
        if items is not None:
            item = items.get(index, {})
            row["curso"] = item.get("curso")
            row["consigna"] = item.get("consigna")
        reasons = result.get("review_reasons") or []
        row.update({
            "model_nota": model_nota,
            "model_feedback": result.get("feedback") if ok else None,
            "model_certainty": round(100 * confidence) if isinstance(confidence, (int, float)) else None,
            "review_reasons": list(reasons),  # type: ignore[call-overload]
            "teacher_nota": teacher_nota,
            "teacher_feedback": teacher_feedback,
            "teacher_comment": teacher_comment,
            "final_nota": teacher_nota if teacher_nota is not None else model_nota,
            "status": "ok" if ok else "error",
            "item_index": index,
        })  # fmt: skip
        rows.append(row)
    return rows


def _columns(rows: Sequence[Mapping[str, object]], with_items: bool) -> list[str]:
    return [k for k in KEYS if with_items or k not in ("curso", "consigna")]


def _cells(row: Mapping[str, object], columns: Sequence[str], lang: str) -> list[object]:
    """A row as a spreadsheet shows it: reasons and status in words, ``None`` as an empty cell."""
    cells: list[object] = []
    for key in columns:
        value = row.get(key)
        if key == "review_reasons":
            value = "; ".join(reasons_in_words(value, lang)) if isinstance(value, list) else ""
        elif key == "status":
            value = catalogue(lang)["status_words"].get(str(value), str(value))
        cells.append("" if value is None else value)
    return cells


def export_csv(
    results: Sequence[Mapping[str, object]], corrections: Corrections, *,
    items: Mapping[int, Mapping[str, str]] | None = None, lang: str = "ca",
) -> str:  # fmt: skip
    """``;``-separated, BOM first, every text cell formula-safe."""
    lang = _lang(lang)
    rows = export_rows(results, corrections, items=items)
    columns = _columns(rows, items is not None)
    buffer = io.StringIO()
    buffer.write(BOM)
    writer = csv.writer(buffer, delimiter=SEPARATOR, lineterminator="\r\n")
    writer.writerow([headers(lang)[c] for c in columns])
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in _cells(row, columns, lang)])
    return buffer.getvalue()


def export_jsonl(
    results: Sequence[Mapping[str, object]], corrections: Corrections, *,
    items: Mapping[int, Mapping[str, str]] | None = None, lang: str = "ca",
) -> str:  # fmt: skip
    """One JSON object per item; ``review_reasons`` as codes, ``review_reasons_text`` in ``lang``."""
    lang = _lang(lang)
    lines = []
    for row in export_rows(results, corrections, items=items):
        reasons = row["review_reasons"]
        row["review_reasons_text"] = reasons_in_words(reasons, lang) if isinstance(reasons, list) else []
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines)


def export_xlsx(
    results: Sequence[Mapping[str, object]], corrections: Corrections, *,
    items: Mapping[int, Mapping[str, str]] | None = None, lang: str = "ca", sheet: str = "",
) -> bytes:  # fmt: skip
    """One sheet: a bold, frozen header with filters; grades as numbers, every text as a string."""
    lang = _lang(lang)
    rows = export_rows(results, corrections, items=items)
    columns = _columns(rows, items is not None)
    buffer = io.BytesIO()
    # strings_to_*: False, and write_string below: a cell is never a formula, a number or a link by guess.
    options = {"in_memory": True, "strings_to_formulas": False, "strings_to_urls": False, "strings_to_numbers": False}
    workbook = xlsxwriter.Workbook(buffer, options)
    worksheet = workbook.add_worksheet(_sheet_name(sheet or catalogue(lang)["messages"]["results_word"]))
    bold = workbook.add_format({"bold": True, "text_wrap": True, "valign": "top"})
    wrap = workbook.add_format({"text_wrap": True, "valign": "top"})
    top = workbook.add_format({"valign": "top"})
    for col, key in enumerate(columns):
        worksheet.write_string(0, col, headers(lang)[key], bold)
        wide = key in ("model_feedback", "teacher_feedback", "teacher_comment", "review_reasons", "consigna")
        worksheet.set_column(col, col, 45 if wide else 14, wrap if wide else top)
    for r, row in enumerate(rows, start=1):
        for col, value in enumerate(_cells(row, columns, lang)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                if value != "":
                    worksheet.write_string(r, col, str(value))
            else:
                worksheet.write_number(r, col, value)
    worksheet.freeze_panes(1, 0)
    if columns:
        worksheet.autofilter(0, 0, max(len(rows), 1), len(columns) - 1)
    workbook.close()
    return buffer.getvalue()


def _sheet_name(name: str) -> str:
    return re.sub(r"[\[\]:*?/\\]", "_", name)[:31] or "results"


def export_filename(job_id: str, fmt: str, lang: str = "ca") -> str:
    """``<job>-resultats.csv``: the job's own name (its last ``/`` segment, the tenant's prefix
    dropped), filesystem-safe, then the word for results in ``lang``."""
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"format must be one of {tuple(MEDIA_TYPES)}")
    word = catalogue(_lang(lang))["messages"]["results_word"]
    name = job_id.rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "feina"
    return f"{name[:60]}-{word}.{fmt}"


def export(
    job_id: str, results: Sequence[Mapping[str, object]], corrections: Corrections, fmt: str, *,
    items: Mapping[int, Mapping[str, str]] | None = None, lang: str = "ca",
) -> tuple[bytes, str, str]:  # fmt: skip
    """What the results route sends: ``(body, media type, file name)`` for ``fmt`` csv|jsonl|xlsx."""
    if fmt == "csv":
        body = export_csv(results, corrections, items=items, lang=lang).encode("utf-8")
    elif fmt == "jsonl":
        body = export_jsonl(results, corrections, items=items, lang=lang).encode("utf-8")
    elif fmt == "xlsx":
        body = export_xlsx(results, corrections, items=items, lang=lang)
    else:
        raise ValueError(f"format must be one of {tuple(MEDIA_TYPES)}")
    return body, MEDIA_TYPES[fmt], export_filename(job_id, fmt, lang)
