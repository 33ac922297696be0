"""The checker: the pure check, the manifest, and a run against a real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from consumer.engine.fake import FakeEngine
from consumer.testing.topics import count_events, items, job, make_settings, produce, read_until, running
from consumer.tools import verify
from consumer.tools.verify import ManifestError, check, read_manifest, render
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames


def result(job_id: str, index: int, status: str = "ok", code: str = "invalid_output") -> dict[str, Any]:
    error = {"code": code, "message": "x"} if status == "error" else None
    return {"result_id": f"{job_id}#{index}", "job_id": job_id, "item_index": index, "status": status, "error": error}


def complete(job_id: str, processed: int, succeeded: int, failed: int) -> dict[str, Any]:
    data = {"total_processed": processed, "succeeded": succeeded, "failed": failed, "status": "completed"}
    return {"event": "complete", "job_id": job_id, "data": data}


def whole(job_id: str, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    accepted = {"event": "accepted", "job_id": job_id, "data": {"total_items": n}}
    return [result(job_id, i) for i in range(n)], [accepted, complete(job_id, n, n, 0)]


def test_every_item_and_complete_event_present_is_ok() -> None:
    r1, p1 = whole("a", 3)
    r2, p2 = whole("b", 2)
    report = check({"a": 3, "b": 2}, r1 + r2, p1 + p2)
    assert report.ok and report.lost == 0 and report.duplicates == 0 and report.orphans == 0
    assert [(j.job_id, j.received, j.missing, j.complete_events) for j in report.jobs] == [
        ("a", 3, [], 1),
        ("b", 2, [], 1),
    ]
    assert render(report).splitlines()[-1] == "OK"


def test_a_lost_item_fails_and_is_listed() -> None:
    results, progress = whole("a", 5)
    del results[3]
    report = check({"a": 5}, results, progress)
    (job_check,) = report.jobs
    assert not report.ok and report.lost == 1 and job_check.missing == [3] and job_check.received == 4
    # The complete event says 5 ok but only 4 results exist.
    assert job_check.complete_problem == "succeeded 5 != 4 ok results"
    assert "missing item indexes: 3" in render(report)


def cancelled(job_id: str, total: int, completed: int, succeeded: int) -> dict[str, Any]:
    data = {"total_items": total, "completed": completed, "succeeded": succeeded,
            "failed": completed - succeeded, "total_time_seconds": 1.0, "status": "cancelled"}  # fmt: skip
    return {"event": "cancelled", "job_id": job_id, "data": data}


def test_a_cancelled_job_is_whole_when_every_item_it_counts_has_a_result() -> None:
    # Cancelled after 3 of 10; one item in flight published after the event.
    results = [result("a", i) for i in range(4)]
    report = check({"a": 10}, results, [cancelled("a", 10, 3, 3)])
    (job_check,) = report.jobs
    assert report.ok and report.lost == 0 and job_check.cancelled
    assert job_check.missing == list(range(4, 10))  # never graded: cancelled, not lost
    assert "cancelled, 6 not graded" in render(report) and "missing item indexes" not in render(report)


def test_a_cancelled_job_missing_results_it_counts_fails() -> None:
    report = check({"a": 10}, [result("a", i) for i in range(2)], [cancelled("a", 10, 3, 3)])
    assert not report.ok
    assert report.jobs[0].complete_problem == "cancelled counts 3 completed, 2 results"


def test_the_first_terminal_event_decides_a_complete_then_a_late_cancel_changes_nothing() -> None:
    results, progress = whole("a", 3)
    report = check({"a": 3}, results, [*progress, cancelled("a", 3, 0, 0)])
    assert report.ok and not report.jobs[0].cancelled


def test_duplicates_are_counted_but_not_a_failure() -> None:
    r1, p1 = whole("a", 4)
    r2, p2 = whole("b", 4)
    extra = [result("a", 0), result("a", 0), result("a", 2), result("b", 1)]
    report = check({"a": 4, "b": 4}, r1 + r2 + extra, p1 + p2 + [complete("a", 4, 4, 0)])
    assert report.ok
    assert [j.duplicates for j in report.jobs] == [3, 1]
    assert (report.duplicates, report.max_duplicates, report.mean_duplicates) == (4, 3, 2.0)
    assert report.jobs[0].received == 4 and report.jobs[0].complete_events == 2


def test_a_job_without_complete_event_fails() -> None:
    results, progress = whole("a", 2)
    report = check({"a": 2}, results, progress[:1])
    assert not report.ok and report.lost == 0
    assert report.jobs[0].complete_events == 0 and report.jobs[0].complete_problem == "no complete event"


@pytest.mark.parametrize(
    ("counts", "problem"),
    [
        ((3, 3, 0), "total_processed 3 != 2"),
        ((2, 1, 0), "succeeded 1 + failed 0 != 2"),
        ((2, 1, 1), "succeeded 1 != 2 ok results"),
    ],
)
def test_complete_with_wrong_counts_fails(counts: tuple[int, int, int], problem: str) -> None:
    results, _ = whole("a", 2)
    report = check({"a": 2}, results, [complete("a", *counts)])
    assert not report.ok and report.lost == 0 and report.jobs[0].complete_problem == problem
    assert f"NO: {problem}" in render(report)


def test_the_last_complete_event_counts_and_errors_are_tallied() -> None:
    results = [result("a", 0), result("a", 1, "error", "input_too_long"), result("a", 2, "error", "engine_error")]
    report = check({"a": 3}, results, [complete("a", 3, 3, 0), complete("a", 3, 1, 2)])
    assert report.ok and report.jobs[0].errors == {"engine_error": 1, "input_too_long": 1}
    assert "engine_error: 1, input_too_long: 1" in render(report)


def test_succeeded_must_match_the_ok_results() -> None:
    results = [result("a", 0), result("a", 1, "error")]
    report = check({"a": 2}, results, [complete("a", 2, 2, 0)])
    assert not report.ok and report.lost == 0
    assert report.jobs[0].complete_problem == "succeeded 2 != 1 ok results"


def test_unexpected_results_fail() -> None:
    results, progress = whole("a", 2)
    wrong_id = result("a", 1) | {"result_id": "a#7"}
    report = check({"a": 2}, [*results, result("a", 2), wrong_id, result("a", -1)], progress)
    assert not report.ok and report.lost == 0 and report.jobs[0].received == 2
    assert report.jobs[0].unexpected == ["a#-1", "a#2", "a#7"]
    assert "unexpected result_ids: a#-1, a#2, a#7" in render(report)


def test_orphans_are_counted_but_not_fatal() -> None:
    results, progress = whole("a", 2)
    others = [result("other", 0), {"not": "a result"}]
    report = check({"a": 2}, results + others, [*progress, complete("other", 1, 1, 0)], undecodable=2)
    assert report.ok and report.orphans == 2 and report.undecodable == 2
    assert "orphan results 2, undecodable records 2" in render(report)


def test_render_lists_at_most_ten_missing_indexes() -> None:
    report = check({"a": 25}, [result("a", 0)], [])
    assert "missing item indexes: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 (+14 more)" in render(report)
    assert report.to_dict()["jobs"][0]["lost"] == 24 and report.to_dict()["ok"] is False


def test_manifest_reads_both_line_forms(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    request = {"job_id": "school-1/term-1", "items": items(3)}
    compact = {"job_id": "b", "total_items": 2000}
    path.write_text(f"{json.dumps(request)}\n\n{json.dumps(compact)}\n", encoding="utf-8")
    assert read_manifest(path) == {"school-1/term-1": 3, "b": 2000}


def test_the_sample_requests_are_a_manifest() -> None:
    sample = Path(__file__).resolve().parents[2] / "data" / "sample_requests.jsonl"
    assert sum(read_manifest(sample).values()) == 20


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", ":1: not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"items": [{}]}', "job_id missing"),
        ('{"job_id": "a b", "total_items": 1}', "job_id missing"),
        ('{"job_id": "a"}', "needs items or total_items"),
        ('{"job_id": "a", "items": []}', "items must be a non-empty list"),
        ('{"job_id": "a", "items": {"x": 1}}', "items must be a non-empty list"),
        ('{"job_id": "a", "total_items": 0}', "total_items must be a positive integer"),
        ('{"job_id": "a", "total_items": "3"}', "total_items must be a positive integer"),
        ('{"job_id": "a", "total_items": true}', "total_items must be a positive integer"),
        ('{"job_id": "a", "total_items": 2, "items": [{}]}', "total_items 2 but 1 items"),
    ],
)
def test_manifest_rejects_bad_lines(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_manifest_rejects_a_repeated_job_id_and_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"job_id": "a", "total_items": 1}\n{"job_id": "a", "total_items": 2}\n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"m.jsonl:2: job_id 'a' already on line 1"):
        read_manifest(path)
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="no jobs"):
        read_manifest(path)


# main() is the command's coroutine: under the CLI it runs on the adapter's loop, here on the session's.
async def test_main_exits_2_on_a_bad_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("nope\n", encoding="utf-8")
    settings = make_settings("127.0.0.1:1", TopicNames.unique(), {})
    assert await verify.main(settings, path, 0, False) == 2
    assert "not JSON" in capsys.readouterr().err


async def test_main_exits_2_when_the_broker_cannot_be_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"job_id": "a", "total_items": 1}\n', encoding="utf-8")
    settings = make_settings("127.0.0.1:1", TopicNames.unique(), {})
    assert await verify.main(settings, path, 0, False) == 2
    err = capsys.readouterr().err
    assert err.startswith("verify: "), err


@pytest.mark.kafka
async def test_verify_a_live_run(
    kafka_bootstrap: str,
    settings_for: SettingsFactory,
    topic_names: TopicNames,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_for()
    manifest = tmp_path / "manifest.jsonl"
    jobs = {"verify-a": items(7), "verify-b": items(12, prefix="B")}
    manifest.write_text("".join(json.dumps({"job_id": j, "items": i}) + "\n" for j, i in jobs.items()))
    async with running(settings, FakeEngine(delay_s=0.001)):
        await produce(kafka_bootstrap, topic_names.requests, [(j.encode(), job(j, i)) for j, i in jobs.items()])
        # Right after a run: wait_s re-reads until both jobs are whole.
        report = await verify.verify(settings, manifest, wait_s=20)
        assert report.ok
    await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 2), timeout_s=5)

    report = await verify.verify(settings, manifest)
    assert report.ok and report.lost == 0 and report.duplicates == 0 and report.orphans == 0
    assert [(j.received, j.complete_events) for j in report.jobs] == [(7, 1), (12, 1)]

    # A redelivered result and another deployment's result on the same topic.
    copy = next(r for r in await verify.read_topic(settings, topic_names.results, timeout_s=10)
                if r["result_id"] == "verify-b#5")  # fmt: skip
    orphan = copy | {"job_id": "elsewhere", "result_id": "elsewhere#0", "item_index": 0}
    await produce(kafka_bootstrap, topic_names.results, [(b"verify-b", json.dumps(copy).encode()),
                                                         (b"elsewhere", json.dumps(orphan).encode()),
                                                         (b"junk", b"\xff not json")])  # fmt: skip
    report = await verify.verify(settings, manifest)
    assert report.ok and report.lost == 0
    assert (report.duplicates, report.orphans, report.undecodable) == (1, 1, 1)
    assert [j.duplicates for j in report.jobs] == [0, 1]

    # The manifest claims one more item than was sent: that item is lost.
    claims = tmp_path / "claims.jsonl"
    claims.write_text('{"job_id": "verify-a", "total_items": 8}\n{"job_id": "verify-b", "total_items": 12}\n')
    started = time.monotonic()
    report = await verify.verify(settings, claims, wait_s=0.5)  # gives up after wait_s
    assert time.monotonic() - started >= 0.5
    assert not report.ok and report.lost == 1 and report.jobs[0].missing == [7]
    assert report.jobs[0].complete_problem == "total_processed 7 != 8"

    capsys.readouterr()
    assert await verify.main(settings, claims, 0, False) == 1
    out = capsys.readouterr().out
    assert "missing item indexes: 7" in out and out.rstrip().endswith("missing/wrong complete events")
    assert await verify.main(settings, manifest, 0, True) == 0
    assert json.loads(capsys.readouterr().out)["duplicates"] == 1


def test_a_cancelled_job_loses_an_item_its_progress_reported_done_even_when_the_counts_add_up() -> None:
    # Items 0-3 reported done before the cancel; item 3's result is lost, and a
    # late result of an in-flight item (5) makes the counts look right.
    batch = {"event": "batch_complete", "job_id": "a",
             "data": {"results": [{"item_index": i, "status": "ok"} for i in range(4)]}}  # fmt: skip
    results = [result("a", i) for i in (0, 1, 2, 5)]
    report = check({"a": 10}, results, [batch, cancelled("a", 10, 4, 4)])
    (job_check,) = report.jobs
    assert job_check.complete_ok  # the counts alone do not see it
    assert not report.ok and report.lost == 1 and job_check.reported_missing == [3]
    assert "reported done, no result: 3" in render(report)
