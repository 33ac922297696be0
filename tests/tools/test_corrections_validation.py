"""A correction is validated like a request: field paths and reasons, never the text."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumer.corrections import Correction, InvalidCorrection, parse_correction
from consumer.tools.correct import CorrectionRejectReason, read_correction_file

SECRET = "El meu germà es diu Pau i viu al carrer Major 3"  # stands for a minor's personal data
NOW = datetime(2026, 12, 2, 10, tzinfo=UTC)


def test_a_valid_correction_and_its_defaults() -> None:
    c = parse_correction({"job_id": "s/j", "item_index": 3, "nota": 0, "comment": "revisat"}, now=NOW)
    assert (c.job_id, c.item_index, c.nota, c.feedback, c.comment, c.corrected_at) == (
        "s/j",
        3,
        0,
        None,
        "revisat",
        NOW,
    )
    assert c.result_id == "s/j#3"
    given = parse_correction({"job_id": "s/j", "item_index": 0, "nota": 5, "corrected_at": "2026-11-30T08:00:00Z"})
    assert given.corrected_at == datetime(2026, 11, 30, 8, tzinfo=UTC)
    # What is produced validates back to the same message (the topic's readers parse it).
    assert Correction.model_validate_json(c.model_dump_json()) == c


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"nota": 6}, "nota"),
        ({"nota": -1}, "nota"),
        ({"nota": True}, "nota"),  # JSON true is not 1
        ({"nota": 2.5}, "nota"),
        ({"nota": "3"}, "nota"),  # a JSON string is not a grade
        ({"item_index": -1}, "item_index"),
        ({"item_index": 2000}, "item_index"),  # beyond MAX_ITEMS_PER_JOB
        ({"job_id": "school 1/job"}, "job_id"),
        ({"feedback": "   "}, "feedback"),
        ({"feedback": SECRET * 100}, "feedback"),
        ({"comment": 7}, "comment"),
        ({"corrected_at": "2026-12-02T10:00:00"}, "corrected_at"),  # no time zone
        ({"schema_version": 2}, "schema_version"),
    ],
)
def test_each_broken_field_is_named_and_its_value_is_never_shown(change: dict[str, object], path: str) -> None:
    value = {"job_id": "s/j", "item_index": 0, "nota": 3, "feedback": SECRET, **change}
    with pytest.raises(InvalidCorrection) as raised:
        parse_correction(value)
    assert raised.value.problems.startswith(f"{path}: ")
    assert [error["loc"] for error in raised.value.errors] == [[path]]
    shown = raised.value.problems + json.dumps(raised.value.errors)
    assert SECRET[:20] not in shown and "2026-12-02T10:00:00" not in shown


def test_the_gateway_form_takes_the_job_from_the_path() -> None:
    c = parse_correction({"item_index": 1, "nota": 2}, job_id="s/j", loc=("body", 0))
    assert c.job_id == "s/j"
    assert parse_correction({"job_id": "s/j", "item_index": 1, "nota": 2}, job_id="s/j").job_id == "s/j"
    with pytest.raises(InvalidCorrection) as raised:
        parse_correction({"job_id": "other/j", "item_index": 1, "nota": 2}, job_id="s/j", loc=("body", 4))
    assert raised.value.errors[0]["loc"] == ["body", 4, "job_id"]
    with pytest.raises(InvalidCorrection) as raised:
        parse_correction({"item_index": 1, "nota": 9}, job_id="s/j", loc=("body", 2))
    assert raised.value.errors[0]["loc"] == ["body", 2, "nota"]
    with pytest.raises(InvalidCorrection) as raised:
        parse_correction([1, 2], job_id="s/j", loc=("body", 3))
    assert raised.value.errors[0]["loc"] == ["body", 3]


def test_a_file_sorts_lines_into_valid_and_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "corrections.jsonl"
    path.write_text(
        "\n".join([
            json.dumps({"job_id": "s/j", "item_index": 0, "nota": 4, "feedback": SECRET}),
            "{not json " + SECRET,
            "",
            json.dumps({"job_id": "s/j", "item_index": 1, "nota": 7, "feedback": SECRET}),
        ]) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    batch = read_correction_file(path, max_items=2000)
    assert [(c.item_index, c.nota) for c in batch.valid] == [(0, 4)]
    bad_json, bad_nota = batch.rejected
    assert (bad_json.line, bad_json.reason, bad_json.key) == (2, CorrectionRejectReason.INVALID_JSON, None)
    assert bad_json.value == ("{not json " + SECRET).encode()  # the original line, unchanged
    assert (bad_nota.line, bad_nota.reason, bad_nota.key) == (4, CorrectionRejectReason.INVALID_CORRECTION, b"s/j")
    assert bad_nota.detail == "nota: Input should be less than or equal to 5"


def test_a_csv_file_reads_its_integer_columns_and_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "corrections.csv"
    path.write_text(
        "job_id,item_index,nota,feedback,comment,corrected_at\n"
        "s/j,0,3,Bé,,2026-12-02T10:00:00Z\n"
        "s/j,1,cinc,,,\n"
        "s/j,2,5,,,\n",
        encoding="utf-8",
    )
    # As a spreadsheet saves it ("CSV UTF-8" starts with a byte-order mark).
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    batch = read_correction_file(path, max_items=2000)
    assert [(c.item_index, c.nota, c.feedback, c.comment) for c in batch.valid] == [
        (0, 3, "Bé", None),
        (2, 5, None, None),
    ]
    (rejected,) = batch.rejected
    assert (rejected.line, rejected.detail) == (3, "nota: Input should be a valid integer")
    assert json.loads(rejected.value)["nota"] == "cinc"
