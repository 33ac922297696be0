"""``texteval calibrate``: fit the temperature that makes the model's confidence mean what it says.

From results (their ``nota_probabilities``) and the teachers' corrections
(the one applied last per result; a correction that keeps the grade says
the model was right), per model: the corrected ok results are split by a
hash of their ``result_id`` into a fitting part and a held-out part
(``holdout``, 30 % by default; the same split on every run). The
temperature ``T`` minimises the negative log-likelihood of the teachers'
grades under ``softmax(log p / T)`` on the fitting part (a one-dimensional
search over log T); the expected calibration error (ECE: 10 equal-width
bins of confidence, the share-weighted gap between mean confidence and
exact agreement in each) is reported on the held-out part, before and
after. Why a temperature and not isotonic regression: consumer/engine/calibration.py.

The distributions read are the ones the results published: when the
consumer already applied a calibration to them (``previous``), the new
temperature is the product of both (temperatures compose: scaling by T1
then T2 is scaling by T1*T2), so the file always maps the model's own
distribution.

``review_share``: the REVIEW_CONFIDENCE below which about that share of
all the model's results (not only the corrected ones) falls, with the
calibrated confidence; and the agreement expected on the rest (their mean
calibrated confidence, and the exact agreement seen on the corrected ones).

Corrections are not a random sample (teachers correct what they look at),
so the fit leans to the reviewed items; refit as corrections accumulate.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from consumer.corrections import Correction
from consumer.engine.calibration import Calibration, CalibrationTable, scaled
from consumer.tools.loop_sources import GradedItem

BINS = 10
_FLOOR = 1e-6  # published probabilities are rounded to 6 decimals: a 0 is "below 1e-6"
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))


@dataclass(frozen=True, slots=True)
class Labelled:
    """One corrected result: the distribution published and the teacher's grade."""

    result_id: str
    probabilities: tuple[float, ...]
    teacher: int


def held_out(result_id: str, share: float) -> bool:
    digest = hashlib.sha256(result_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def expected_calibration_error(items: Sequence[Labelled], temperature: float = 1.0, bins: int = BINS) -> float | None:
    """ECE of the grade given (the argmax) against the teachers' grades."""
    if not items:
        return None
    sums = [[0.0, 0.0, 0] for _ in range(bins)]  # confidence, correct, n
    for item in items:
        probabilities = scaled(item.probabilities, temperature)
        confidence = max(probabilities)
        nota = probabilities.index(confidence)
        cell = sums[min(bins - 1, int(confidence * bins))]
        cell[0] += confidence
        cell[1] += nota == item.teacher
        cell[2] += 1
    return sum(abs(c - k) for c, k, n in sums if n) / len(items)


def negative_log_likelihood(items: Sequence[Labelled], temperature: float) -> float:
    total = 0.0
    for item in items:
        logs = [math.log(max(p, _FLOOR)) / temperature for p in item.probabilities]
        top = max(logs)
        total += top + math.log(sum(math.exp(v - top) for v in logs)) - logs[item.teacher]
    return total / len(items)


def fit_temperature(items: Sequence[Labelled]) -> float:
    """The T minimising the NLL (convex in 1/T): golden-section search over log T in [0.05, 20]."""
    low, high = _LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = negative_log_likelihood(items, math.exp(a)), negative_log_likelihood(items, math.exp(b))
    for _ in range(80):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = negative_log_likelihood(items, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = negative_log_likelihood(items, math.exp(b))
    return math.exp((low + high) / 2)


@dataclass
class ReviewChoice:
    share: float  # asked for
    review_confidence: float  # the threshold
    flagged_share: float  # of the model's results, with that threshold
    expected_agreement: float | None  # mean calibrated confidence of the rest
    observed_agreement: float | None  # exact agreement of the corrected rest
    observed_n: int


@dataclass
class ModelCalibration:
    calibration: Calibration  # the composed temperature, for the file
    fitted: float  # the temperature fitted on these results (before composing)
    fitting_n: int
    held_out_n: int
    review: ReviewChoice | None = None


def choose_review(
    confidences: Sequence[float], labelled: Sequence[Labelled], temperature: float, share: float
) -> ReviewChoice:
    """The threshold below which about ``share`` of ``confidences`` (calibrated) fall."""
    ordered = sorted(confidences)
    cut = min(len(ordered) - 1, max(0, round(share * len(ordered))))
    threshold = ordered[cut] if share > 0 else 0.0
    rest = [c for c in ordered if c >= threshold]
    kept = [i for i in labelled if max(scaled(i.probabilities, temperature)) >= threshold]
    # The grade given is the argmax, the same before and after a temperature.
    right = sum(i.probabilities.index(max(i.probabilities)) == i.teacher for i in kept)
    return ReviewChoice(
        share=share,
        review_confidence=round(threshold, 6),
        flagged_share=(len(ordered) - len(rest)) / len(ordered),
        expected_agreement=sum(rest) / len(rest) if rest else None,
        observed_agreement=right / len(kept) if kept else None,
        observed_n=len(kept),
    )


def calibrate(
    results: Mapping[str, GradedItem],
    corrections: Mapping[str, Correction],
    *,
    prompt_format: str,
    holdout: float = 0.3,
    previous: CalibrationTable | None = None,
    review_share: float | None = None,
    min_items: int = 20,
) -> list[ModelCalibration]:
    """One calibration per model with at least ``min_items`` corrected results carrying a distribution."""
    by_model: dict[str, list[Labelled]] = {}
    for rid, correction in sorted(corrections.items()):
        result = results.get(rid)
        if result is None or not result.ok or result.probabilities is None:
            continue
        by_model.setdefault(result.model, []).append(Labelled(rid, result.probabilities, correction.nota))
    out = []
    for model in sorted(by_model):
        items = by_model[model]
        if len(items) < min_items:
            continue
        test = [i for i in items if held_out(i.result_id, holdout)]
        train = [i for i in items if not held_out(i.result_id, holdout)]
        fitted = fit_temperature(train)
        before = previous.find(model, prompt_format) if previous is not None else None
        composed = fitted * (before.temperature if before is not None else 1.0)
        calibration = Calibration(
            model=model,
            prompt_format=prompt_format,
            temperature=round(composed, 6),
            fitted_on=len(train),
            ece_before=expected_calibration_error(test),
            ece_after=expected_calibration_error(test, fitted),
        )
        report = ModelCalibration(calibration, fitted, len(train), len(test))
        if review_share is not None:
            confidences = [
                max(scaled(r.probabilities, fitted))
                for r in results.values()
                if r.model == model and r.ok and r.probabilities is not None
            ]
            report.review = choose_review(confidences, items, fitted, review_share)
        out.append(report)
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render(reports: Sequence[ModelCalibration]) -> str:
    if not reports:
        return "no model has enough corrected results with nota_probabilities to calibrate\n"
    lines = []
    for r in reports:
        c = r.calibration
        lines.append(f"model {c.model}, prompt format {c.prompt_format}")
        lines.append(
            f"  temperature {c.temperature:.3f} (fitted here {r.fitted:.3f}) on {r.fitting_n} corrections;"
            f" {r.held_out_n} held out"
        )
        lines.append(f"  ECE on held-out corrections: before {_fmt(c.ece_before)}, after {_fmt(c.ece_after)}")
        if r.review is not None:
            v = r.review
            lines.append(
                f"  REVIEW_CONFIDENCE={v.review_confidence:.3f} sends {v.flagged_share:.1%} of results to review"
                f" (asked {v.share:.0%})"
            )
            lines.append(
                f"  agreement expected on the rest: {_fmt(v.expected_agreement)}"
                f" (seen on {v.observed_n} corrected: {_fmt(v.observed_agreement)})"
            )
    return "\n".join(lines) + "\n"
