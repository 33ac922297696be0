"""Reading item files, grading them all in flight, writing result files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from consumer.contract import EvaluationResult, ItemStatus
from consumer.engine.fake import FakeEngine
from consumer.tools.files import CSV_COLUMNS, InputFileError, job_id_for, read_items, read_results, write_results
from consumer.tools.offline import grade_items
from tests.helpers import DATA, sample_items


def test_csv_jsonl_and_json_give_the_same_items(tmp_path: Path) -> None:
    from_csv = read_items(DATA / "sample_items.csv", 2000)
    from_jsonl = read_items(DATA / "sample_requests.jsonl", 2000)
    request = tmp_path / "job.json"
    request.write_text(json.dumps({"job_id": "j", "items": [i.model_dump() for i in from_csv]}))
    assert len(from_csv) == 20
    assert from_csv == from_jsonl == read_items(request, 2000) == sample_items()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", "{not json", "not JSON"),
        ("bad.jsonl", '{"items": []}\n{oops', "line 2"),
        ("bad.csv", "id_alumno,curso,consigna\nA1,1r,Q\n", "respuesta"),
        ("bad.txt", "x", "unknown file type"),
        ("empty.jsonl", "", "items"),
    ],
)
def test_unreadable_files_say_where(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputFileError, match=message):
        read_items(path, 2000)


def test_invalid_item_error_does_not_quote_the_text(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"id_alumno": "A1", "curso": "1r", "consigna": "Q", "respuesta": 12345}) + "\n")
    with pytest.raises(InputFileError) as caught:
        read_items(path, 2000)
    assert "items.0.respuesta" in str(caught.value) and "12345" not in str(caught.value)


def test_file_names_become_valid_job_ids() -> None:
    assert job_id_for(Path("Notes de 3r ESO (grup B).csv")) == "file:Notes-de-3r-ESO--grup-B-"


async def test_every_item_is_in_flight_at_once_and_results_keep_item_order() -> None:
    items = sample_items()
    engine = FakeEngine(delay_s=0.05)
    seen: list[int] = []
    results = await grade_items(engine, "job-1", items, on_result=lambda r: seen.append(r.item_index))
    assert engine.max_in_flight == len(items)  # not chunks of ten
    assert [r.item_index for r in results] == list(range(len(items)))
    assert sorted(seen) == list(range(len(items)))
    assert all(r.result_id == f"job-1#{r.item_index}" and r.id_alumno == items[r.item_index].id_alumno for r in results)
    assert {r.status for r in results} == {ItemStatus.OK}


async def test_results_round_trip_through_csv_and_jsonl(tmp_path: Path) -> None:
    results = await grade_items(FakeEngine(max_model_len=300), "job-2", sample_items())
    assert any(r.status is ItemStatus.ERROR for r in results)  # some are input_too_long at 300
    jsonl, table = tmp_path / "r.jsonl", tmp_path / "r.csv"
    write_results(reversed(results), jsonl)
    write_results(results, table)
    assert read_results(jsonl) == results
    rows = list(csv.DictReader(table.open(encoding="utf-8-sig")))  # written with a BOM, for Excel
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == len(results)
    for row, result in zip(rows, results, strict=True):
        assert row["result_id"] == result.result_id
        assert row["nota"] == ("" if result.nota is None else str(result.nota))
        assert row["error_code"] == (result.error.code.value if result.error else "")
        EvaluationResult.model_validate(result.model_dump())
