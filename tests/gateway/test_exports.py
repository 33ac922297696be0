"""consumer/gateway/exports.py: the results files a teacher takes to a gradebook,
with the model's word and the teacher's side by side (issue 30, part 1)."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from datetime import UTC, datetime
from xml.etree import ElementTree

import pytest

from consumer.corrections import Correction
from consumer.gateway.catalogues import catalogue
from consumer.gateway.exports import (
    KEYS,
    TeacherWord,
    export,
    export_csv,
    export_filename,
    export_jsonl,
    export_rows,
    export_xlsx,
    headers,
)
from consumer.spreadsheets import restore_cell

WORDS_CA = catalogue("ca")["reasons"]

JOB = "school-3/3rESO-fotosintesi-2026-12-06-ab12cd34"

# As results_rows(record) gives them (ItemSummary dumped, plus job_id).
RESULTS: list[dict[str, object]] = [
    {"job_id": JOB, "item_index": 0, "id_alumno": "A001", "status": "ok", "nota": 2,
     "feedback": "Cal explicar el paper de la llum.", "nota_probabilities": [0, 0.1, 0.6, 0.2, 0.1, 0],
     "confidence": 0.6, "needs_review": True, "review_reasons": ["low_confidence", "near_tie"]},
    {"job_id": JOB, "item_index": 1, "id_alumno": "=HYPERLINK(\"http://x\")", "status": "ok", "nota": 4,
     "feedback": "-bé; ben \"argumentat\"\nsegona línia", "nota_probabilities": [0, 0, 0, 0.05, 0.9, 0.05],
     "confidence": 0.9, "needs_review": False, "review_reasons": []},
    {"job_id": JOB, "item_index": 2, "id_alumno": "A003", "status": "error", "nota": None, "feedback": None},
    {"job_id": JOB, "item_index": 3, "id_alumno": "A004", "status": "ok", "nota": 5, "feedback": "Excel·lent.",
     "nota_probabilities": [0, 0, 0, 0, 0.02, 0.98], "confidence": 0.98, "needs_review": False, "review_reasons": []},
]  # fmt: skip


def correction(index: int, nota: int, feedback: str | None = None, comment: str | None = None) -> Correction:
    return Correction(job_id=JOB, item_index=index, nota=nota, feedback=feedback, comment=comment,
                      corrected_at=datetime(2026, 12, 6, 10, tzinfo=UTC))  # fmt: skip


CORRECTIONS: dict[int, TeacherWord | int] = {
    0: correction(0, 4, "Molt bé: hi ha la llum i la clorofil·la.", "revisat a classe"),
    2: correction(2, 3, "=cmd|' /C calc'!A0"),  # an error result corrected by the teacher; a formula as feedback
    3: 5,  # a bare grade, as AppliedGrades keeps it today
}


def read_csv(text: str) -> list[dict[str, str]]:
    assert text.startswith("\ufeff")
    return list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""), delimiter=";"))


def test_rows_put_the_teachers_word_beside_the_models_and_a_final_grade() -> None:
    rows = {r["item_index"]: r for r in export_rows(RESULTS, CORRECTIONS)}
    assert list(rows) == [0, 1, 2, 3]
    assert rows[0]["model_nota"] == 2 and rows[0]["teacher_nota"] == 4 and rows[0]["final_nota"] == 4
    assert rows[0]["teacher_feedback"] == "Molt bé: hi ha la llum i la clorofil·la."
    assert rows[0]["teacher_comment"] == "revisat a classe" and rows[0]["model_certainty"] == 60
    assert rows[1]["teacher_nota"] is None and rows[1]["final_nota"] == 4  # not corrected: the model's
    assert rows[2]["model_nota"] is None and rows[2]["status"] == "error" and rows[2]["final_nota"] == 3
    assert rows[3]["teacher_nota"] == 5 and rows[3]["teacher_feedback"] is None
    assert "curso" not in rows[0] and "respuesta" not in rows[0]  # the gateway has neither; never the answer


def test_csv_is_semicolon_separated_with_a_bom_and_no_formula_and_says_reasons_in_catalan() -> None:
    text = export_csv(RESULTS, CORRECTIONS)
    assert text.splitlines()[0] == "\ufeff" + ";".join(headers("ca")[k] for k in KEYS if k not in ("curso", "consigna"))
    rows = read_csv(text)
    assert len(rows) == 4
    first = rows[0]
    assert first["id_alumno"] == "A001" and first["nota del model"] == "2" and first["nota del docent"] == "4"
    assert first["nota final"] == "4" and first["retorn del docent"].startswith("Molt bé")
    assert first["motius per revisar"] == f"{WORDS_CA['low_confidence']}; {WORDS_CA['near_tie']}"
    assert first["certesa del model (%)"] == "60" and first["estat"] == "avaluada"
    # Formula-looking cells start with a quote (and come back exactly); newlines and quotes survive.
    assert (
        rows[1]["id_alumno"] == '\'=HYPERLINK("http://x")'
        and restore_cell(rows[1]["id_alumno"]) == '=HYPERLINK("http://x")'
    )
    assert rows[1]["retorn del model"] == '\'-bé; ben "argumentat"\nsegona línia'
    assert rows[2]["retorn del docent"].startswith("'=") and rows[2]["estat"] == "el model no l'ha pogut avaluar"
    assert rows[2]["nota del model"] == "" and rows[2]["nota final"] == "3"
    for line in text.splitlines():  # no cell of the file starts a formula
        for cell in next(csv.reader([line], delimiter=";")) if line else []:
            assert not re.match(r"^[=+\-@]", cell)


def test_csv_in_spanish_and_english_and_with_the_items_columns() -> None:
    items = {
        0: {"curso": "3r ESO", "consigna": "Explica la fotosíntesi."},
        1: {"curso": "3r ESO", "consigna": "+Defineix"},
    }
    es = read_csv(export_csv(RESULTS, CORRECTIONS, items=items, lang="es"))
    assert es[0]["curso"] == "3r ESO" and es[0]["consigna"] == "Explica la fotosíntesi."
    assert es[1]["consigna"] == "'+Defineix" and es[2]["curso"] == ""
    assert es[0]["motivos para revisar"].startswith(catalogue("es")["reasons"]["low_confidence"])
    en = read_csv(export_csv(RESULTS, CORRECTIONS, lang="en"))
    assert en[0]["teacher's grade"] == "4" and en[0]["final grade"] == "4"
    with pytest.raises(ValueError):
        export_csv(RESULTS, CORRECTIONS, lang="fr")


def test_jsonl_keeps_codes_and_words() -> None:
    lines = [json.loads(line) for line in export_jsonl(RESULTS, CORRECTIONS).splitlines()]
    assert [row["item_index"] for row in lines] == [0, 1, 2, 3]
    assert lines[0]["review_reasons"] == ["low_confidence", "near_tie"]
    assert lines[0]["review_reasons_text"][0] == WORDS_CA["low_confidence"]
    assert lines[0]["teacher_feedback"].startswith("Molt bé") and lines[0]["final_nota"] == 4
    assert lines[1]["id_alumno"] == '=HYPERLINK("http://x")'  # JSON is data: no spreadsheet rule


def _sheet_cells(data: bytes) -> dict[str, str]:
    """Cell reference -> text or number, read from the .xlsx's XML (no spreadsheet library needed)."""
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        shared = [
            "".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t"))
            for si in ElementTree.fromstring(z.read("xl/sharedStrings.xml")).findall("m:si", ns)
        ]
        sheet = ElementTree.fromstring(z.read("xl/worksheets/sheet1.xml"))
        assert not list(sheet.iter(f"{{{ns['m']}}}f")), "a formula in the sheet"
    cells = {}
    for c in sheet.iter(f"{{{ns['m']}}}c"):
        value = c.find("m:v", ns)
        if value is None:
            continue
        cells[c.get("r", "")] = shared[int(value.text or 0)] if c.get("t") == "s" else str(value.text)
    return cells


def test_xlsx_holds_both_grades_as_numbers_and_text_never_as_a_formula() -> None:
    data = export_xlsx(RESULTS, CORRECTIONS)
    assert data[:2] == b"PK"
    cells = _sheet_cells(data)
    columns = [k for k in KEYS if k not in ("curso", "consigna")]
    col = {key: chr(ord("A") + i) for i, key in enumerate(columns)}
    assert cells["A1"] == "id_alumno" and cells[f"{col['final_nota']}1"] == "nota final"
    assert cells["A2"] == "A001" and cells[f"{col['model_nota']}2"] == "2" and cells[f"{col['teacher_nota']}2"] == "4"
    assert cells[f"{col['teacher_feedback']}2"].startswith("Molt bé")
    assert cells["A3"] == '=HYPERLINK("http://x")'  # a string cell: shown as typed, never evaluated
    assert cells[f"{col['final_nota']}4"] == "3" and f"{col['model_nota']}4" not in cells


def test_file_names_and_the_routes_one_call() -> None:
    assert export_filename(JOB, "csv") == "3rESO-fotosintesi-2026-12-06-ab12cd34-resultats.csv"
    assert export_filename("school-1/../x: y", "xlsx", "es") == "x_y-resultados.xlsx"
    assert export_filename("...", "jsonl", "en") == "feina-results.jsonl"
    body, media, name = export(JOB, RESULTS, CORRECTIONS, "csv")
    assert body.startswith("\ufeff".encode()) and media == "text/csv; charset=utf-8" and name.endswith("-resultats.csv")
    body, media, name = export(JOB, RESULTS, {}, "xlsx", lang="en")
    assert body[:2] == b"PK" and "spreadsheetml" in media and name.endswith("-results.xlsx")
    with pytest.raises(ValueError):
        export(JOB, RESULTS, {}, "pdf")


def test_the_downloaded_results_hold_both_corrections_and_the_teachers_feedback() -> None:
    """Issue 30's target, through the gateway's own route: two corrections posted, then the
    teachers' file (CSV in the gradebook layout, and .xlsx) carries both, with the feedback."""
    from tests.gateway.gateway_double import KEY_A, TWO_TENANTS, accepted, batch, bearer, harness, ok_result

    h = harness(**TWO_TENANTS)
    job = "school-a/class"
    h.feed(accepted(job, 3))
    h.feed(batch(job, [ok_result(0, "Model 0."), ok_result(1, "Model 1."), ok_result(2, "Model 2.")], 3))
    h.feed({"event": "complete", "job_id": job,
            "data": {"total_processed": 3, "succeeded": 3, "failed": 0, "total_time_seconds": 1.0}})  # fmt: skip
    corrections = [
        {"item_index": 0, "nota": 5, "feedback": "Molt ben explicat, amb exemples.", "comment": "revisat"},
        {"item_index": 2, "nota": 1, "feedback": "Cal explicar el procés."},
    ]
    answer = h.client.post(f"/jobs/{job}/corrections", json=corrections, headers=bearer(KEY_A))
    assert answer.status_code == 202, answer.text
    csv_answer = h.client.get(f"/jobs/{job}/results", params={"layout": "gradebook"}, headers=bearer(KEY_A))
    assert csv_answer.status_code == 200
    text = csv_answer.text
    assert "Molt ben explicat, amb exemples." in text and "Cal explicar el procés." in text and "revisat" in text
    lines = text.removeprefix("\ufeff").splitlines()
    assert len(lines) == 4 and ";" in lines[0]
    assert "resultats" in csv_answer.headers["content-disposition"]
    xlsx = h.client.get(f"/jobs/{job}/results", params={"format": "xlsx"}, headers=bearer(KEY_A))
    assert xlsx.status_code == 200 and xlsx.content[:2] == b"PK"
    assert xlsx.headers["content-type"].startswith("application/vnd.openxmlformats")
    bad = h.client.get(f"/jobs/{job}/results", params={"lang": "fr"}, headers=bearer(KEY_A))
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "lang"]
