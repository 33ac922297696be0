"""A correction is validated like a request: field paths and reasons, never the text."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consumer.corrections import (
    Correction,
    ErasedSkipped,
    InvalidCorrection,
    correction_by,
    correction_record,
    in_the_future,
    latest_by_item,
    parse_correction,
    without_erased,
)
from consumer.decisions import parse_record
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


# --- contract 1.3: the rules, in consumer/corrections.py for every writer and reader ---


def test_a_corrected_at_more_than_a_minute_ahead_is_refused_with_its_path_and_a_minute_of_skew_is_not() -> None:
    base = {"job_id": "s/j", "item_index": 0, "nota": 3, "feedback": SECRET}
    skewed = parse_correction({**base, "corrected_at": (NOW + timedelta(seconds=59)).isoformat()}, now=NOW)
    assert skewed.corrected_at == NOW + timedelta(seconds=59)
    with pytest.raises(InvalidCorrection) as raised:
        parse_correction({**base, "corrected_at": (NOW + timedelta(minutes=2)).isoformat()}, now=NOW, loc=("body", 1))
    assert raised.value.in_future
    assert raised.value.problems == "corrected_at: lies more than a minute in the future"
    assert raised.value.errors == [
        {"loc": ["body", 1, "corrected_at"], "msg": "lies more than a minute in the future", "type": "value_error"}
    ]
    assert SECRET[:20] not in raised.value.problems + json.dumps(raised.value.errors)
    # Judged against the moment it was written: read a day later, it is still the invalid one it was.
    assert not in_the_future(skewed, NOW) and in_the_future(
        Correction(job_id="s/j", item_index=0, nota=1, corrected_at=NOW + timedelta(minutes=2)), NOW
    )
    # Other invalid corrections are not "in the future".
    with pytest.raises(InvalidCorrection) as raised:
        parse_correction({**base, "nota": 7}, now=NOW)
    assert not raised.value.in_future


def test_texteval_correct_dead_letters_a_future_line_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "corrections.jsonl"
    future = {"job_id": "s/j", "item_index": 1, "nota": 2, "corrected_at": "2999-01-01T00:00:00Z"}
    path.write_text(json.dumps({"job_id": "s/j", "item_index": 0, "nota": 4}) + "\n" + json.dumps(future) + "\n")
    batch = read_correction_file(path, max_items=2000)
    assert [c.item_index for c in batch.valid] == [0]
    (rejected,) = batch.rejected
    assert (rejected.line, rejected.reason, rejected.key) == (2, CorrectionRejectReason.INVALID_CORRECTION, b"s/j")
    assert rejected.detail == "corrected_at: lies more than a minute in the future"


def test_the_correction_applied_last_counts_not_the_latest_corrected_at() -> None:
    def c(index: int, nota: int, at: datetime) -> Correction:
        return Correction(job_id="s/j", item_index=index, nota=nota, corrected_at=at)

    earlier = NOW - timedelta(days=1)
    applied = [c(0, 5, NOW), c(1, 2, NOW), c(0, 1, earlier), c(0, 3, earlier)]
    latest = latest_by_item(applied)
    assert {rid: x.nota for rid, x in latest.items()} == {"s/j#0": 3, "s/j#1": 2}


def test_erased_jobs_are_left_out_and_counted() -> None:
    corrections = {
        f"{job}#{i}": Correction(job_id=job, item_index=i, nota=1, corrected_at=NOW)
        for job, n in (("s/a", 3), ("s/b", 2), ("s/c", 1))
        for i in range(n)
    }
    kept, jobs, items = without_erased(corrections, {"s/a", "s/c", "s/never-corrected"})
    assert sorted(kept) == ["s/b#0", "s/b#1"] and (jobs, items) == (2, 4)
    assert str(ErasedSkipped(jobs, items)) == "erased jobs skipped: 2 (4 corrected items)"
    assert str(ErasedSkipped(checked=False)) == "erased jobs not checked"


def test_a_correction_record_holds_the_grade_and_who_never_the_feedback_or_the_key() -> None:
    correction = parse_correction(
        {"job_id": "school-1/t/j", "item_index": 4, "nota": 2, "feedback": SECRET, "comment": SECRET}, now=NOW
    )
    applied_at = NOW + timedelta(seconds=5)
    record = correction_record(correction, previous_nota=4, by="school-1:0a1b2c3d4e", applied_at=applied_at)
    assert record.model_dump(mode="json") == {
        "schema_version": 1, "record": "correction", "result_id": "school-1/t/j#4", "job_id": "school-1/t/j",
        "tenant": "school-1", "item_index": 4, "nota": 2, "previous_nota": 4, "by": "school-1:0a1b2c3d4e",
        "corrected_at": "2026-12-02T10:00:00Z", "applied_at": "2026-12-02T10:00:05Z",
    }  # fmt: skip
    assert parse_record(record.model_dump_json().encode()) == record  # what explain reads back
    assert correction_by(tenant="school-1", key_id="0a1b2c3d4e") == "school-1:0a1b2c3d4e"
    assert correction_by(tenant=None, key_id=None) == "anonymous"
    assert correction_by(tenant=None, key_id="9f9f9f9f9f", admin=True) == "admin:9f9f9f9f9f"
