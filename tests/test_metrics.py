"""The consumer's grade metrics (contract 1.2): bounded labels, every series at 0 from the start."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.metrics import CONFIDENCE_BUCKETS, Metrics

MODEL = "carlosvillu/gemma2-9b-teacher-eval-nota-feedback"


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def grade_series(metrics: Metrics) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("texteval_grade")
    }


def test_expect_model_creates_every_grade_series_at_zero() -> None:
    metrics = Metrics()
    assert grade_series(metrics) == set()  # no model yet: nothing to label
    metrics.expect_model(MODEL)
    for nota in range(6):
        assert value(metrics, "texteval_grades_total", model=MODEL, nota=str(nota)) == 0
    assert value(metrics, "texteval_grades_needs_review_total", model=MODEL) == 0
    assert value(metrics, "texteval_grade_confidence_count", model=MODEL) == 0
    assert value(metrics, "texteval_grade_confidence_bucket", model=MODEL, le="0.5") == 0
    created = grade_series(metrics)
    metrics.expect_model(MODEL)  # again: the same series, no new ones
    assert grade_series(metrics) == created
    # 6 grades + review + the histogram (buckets and +Inf, _count, _sum, _created of each family).
    assert len({s for s in created if s[0].endswith("_bucket")}) == len(CONFIDENCE_BUCKETS) + 1


def test_observe_grade_counts_the_grade_its_confidence_and_the_review_flag() -> None:
    metrics = Metrics()
    metrics.expect_model(MODEL)
    metrics.observe_grade(MODEL, 3, 0.97, False)
    metrics.observe_grade(MODEL, 3, 0.42, True)
    metrics.observe_grade(MODEL, 0, 0.55, False)
    metrics.observe_grade(MODEL, 5, None, None)  # GRADE_DISTRIBUTION=false: a grade, no confidence
    grades = {n: value(metrics, "texteval_grades_total", model=MODEL, nota=str(n)) for n in range(6)}
    assert grades == {0: 1, 1: 0, 2: 0, 3: 2, 4: 0, 5: 1}
    assert value(metrics, "texteval_grades_needs_review_total", model=MODEL) == 1
    # The share to review is over grades that carried a confidence: 1 of 3, not of 4.
    assert value(metrics, "texteval_grade_confidence_count", model=MODEL) == 3
    assert value(metrics, "texteval_grade_confidence_sum", model=MODEL) == pytest.approx(0.97 + 0.42 + 0.55)
    # REVIEW_CONFIDENCE's default (0.5) is a bucket bound: the share under it is exact.
    assert value(metrics, "texteval_grade_confidence_bucket", model=MODEL, le="0.5") == 1
    assert value(metrics, "texteval_grade_confidence_bucket", model=MODEL, le="0.6") == 2
    assert value(metrics, "texteval_grade_confidence_bucket", model=MODEL, le="0.99") == 3


def test_observe_grade_refuses_a_grade_off_the_scale() -> None:
    metrics = Metrics()
    metrics.expect_model(MODEL)
    before = grade_series(metrics)
    for nota in (-1, 6):
        with pytest.raises(ValueError, match="not a grade"):
            metrics.observe_grade(MODEL, nota, 0.9, False)
    assert grade_series(metrics) == before  # no series for it either


def test_confidence_buckets_cover_every_grade_a_model_would_give() -> None:
    # The most probable of six grades has probability >= 1/6: everything from
    # there to 1 falls in a finite bucket, and the review threshold is one of them.
    assert CONFIDENCE_BUCKETS[0] > 1 / 6 - 0.05 and CONFIDENCE_BUCKETS[-1] == 1.0
    assert list(CONFIDENCE_BUCKETS) == sorted(set(CONFIDENCE_BUCKETS))
    assert 0.5 in CONFIDENCE_BUCKETS  # REVIEW_CONFIDENCE's default (consumer/settings.py)
