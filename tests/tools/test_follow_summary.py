"""``texteval submit --follow`` ends by saying how many grades to review (issue 22, item 2).

The count is the results' own ``needs_review`` (contract 1.2), one per
``result_id``: a result seen twice (at-least-once delivery) counts once.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from consumer.contract import EvaluationResult
from consumer.engine.fake import FakeEngine
from consumer.testing.processes import service_env
from consumer.testing.topics import running
from consumer.tools.client import FollowSummary, JobProgress
from consumer.tools.files import read_results
from tests.helpers import DATA, REPO, SettingsFactory
from tests.kafka_harness import TopicNames


def result(job_id: str, i: int, *, confidence: float | None = None, review_below: float = 0.5) -> EvaluationResult:
    base = {
        "result_id": f"{job_id}#{i}", "job_id": job_id, "item_index": i, "id_alumno": f"A{i}", "status": "ok",
        "nota": 2, "feedback": "Bé.", "error": None, "model": "m", "prompt_sha256": "0" * 64,
        "sampling": {"temperature": 0.1, "top_p": 0.95, "max_tokens": 380, "seed": 0},
        "latency_ms": 1.0, "produced_at": "2026-12-02T10:00:00Z",
    }  # fmt: skip
    if confidence is not None:
        rest = (1 - confidence) / 5
        base |= {"nota_probabilities": [confidence if g == 2 else rest for g in range(6)],
                 "confidence": confidence, "needs_review": confidence < review_below}  # fmt: skip
    return EvaluationResult.model_validate(base)


def error(job_id: str, i: int) -> EvaluationResult:
    return EvaluationResult.model_validate({
        **result(job_id, i).model_dump(mode="json"), "status": "error", "nota": None, "feedback": None,
        "error": {"code": "invalid_output", "message": "no grade"},
    })  # fmt: skip


def followed(*jobs: list[EvaluationResult]) -> dict[str, JobProgress]:
    return {found[0].job_id: JobProgress(total=len(found), results={r.result_id: r for r in found}) for found in jobs}


def test_the_summary_counts_the_grades_to_review_over_every_job() -> None:
    a = [result("a", 0, confidence=0.3), result("a", 1, confidence=0.9), error("a", 2)]
    b = [result("b", 0, confidence=0.49), result("b", 1, confidence=0.5), result("b", 2, confidence=0.99)]
    summary = FollowSummary.of(followed(a, b))
    assert (summary.ok, summary.failed, summary.to_review) == (5, 1, 2)
    assert str(summary) == "6 results: 5 ok, 1 typed errors; 2 to review (low confidence)"


def test_none_to_review_is_said_and_no_confidence_is_not_taken_for_none() -> None:
    sure = FollowSummary.of(followed([result("a", 0, confidence=0.9), error("a", 1)]))
    assert sure.to_review == 0 and str(sure).endswith("; 0 to review (low confidence)")
    # A consumer with the grade distribution off (or a 1.1 one): unknown, not zero.
    off = FollowSummary.of(followed([result("a", 0), result("a", 1)]))
    assert off.to_review is None and str(off) == "2 results: 2 ok, 0 typed errors; no confidence reported"
    # Only errors: nothing to be sure or unsure of.
    assert str(FollowSummary.of(followed([error("a", 0)]))) == "1 results: 0 ok, 1 typed errors"


@pytest.mark.process
async def test_submit_follow_prints_how_many_to_review_as_the_results_file_flags(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames, tmp_path: Path
) -> None:
    settings = settings_for()
    out = tmp_path / "results.jsonl"
    # A high threshold for the fake's 0.45..0.98 confidences: some of the 20 sample texts to review, not all.
    async with running(settings, FakeEngine(delay_s=0.01, review_below=0.75)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumer.tools.cli", "submit", str(DATA / "sample_items.csv"), "--follow",
            "--out", str(out), cwd=REPO, env=service_env(settings),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        printed, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = printed.decode()
    assert proc.returncode == 0, text
    results = read_results(out)
    flagged = sum(1 for r in results if r.needs_review)
    assert all(r.needs_review is not None for r in results if r.status == "ok")
    assert 0 < flagged < len(results) == 20
    found = re.search(r"(\d+) results: (\d+) ok, (\d+) typed errors; (\d+) to review", text)
    assert found is not None, text
    assert int(found[4]) == flagged and int(found[1]) == len(results)
