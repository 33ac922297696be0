"""``texteval agreement``: how the model grades against the teachers who corrected it.

The pairs are the ``ok`` results that a teacher corrected (the correction
applied last per result; a correction that keeps the grade counts as an
agreement), erased jobs left out (contract 1.3). Per model and prompt format: n, exact agreement, within-one
agreement (|model - teacher| <= 1), quadratic weighted kappa (the ASAP
competition's measure, chance-corrected and weighting a miss by its
distance squared), the 6x6 confusion matrix (rows: the model's grade,
columns: the teacher's) and the exact agreement by confidence band (does a
low confidence really mean more corrections?).

What it does not say: corrections are not a random sample (teachers correct
what they look at, and look more at what the page flags), so these are
agreement figures on the reviewed items, not the model's accuracy overall.

The prompt format: a result's ``prompt_sha256`` is the hash of its whole
prompt, student text included, so it differs per item and cannot group
anything by itself. With the requests (``--requests``) each item's prompt
is rendered in the fine-tune's format and its hash compared: equal means
``gemma_finetune``, different ``other``; without them the format is
``unknown``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.contract import Item
from consumer.corrections import Correction, ErasedSkipped
from consumer.engine.output import NOTA_VALUES
from consumer.engine.prompt import PromptBuilder
from consumer.tools.loop_sources import GradedItem

GRADES = len(NOTA_VALUES)  # 0..5
# Lower bounds, highest first; a confidence in [0.9, 1] is "0.9-1.0".
CONFIDENCE_BANDS: tuple[tuple[float, str], ...] = (
    (0.9, "0.9-1.0"),
    (0.7, "0.7-0.9"),
    (0.5, "0.5-0.7"),
    (0.0, "0.0-0.5"),
)
UNKNOWN = "unknown"


def confusion_matrix(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """6x6 counts: ``matrix[model][teacher]``."""
    matrix = [[0] * GRADES for _ in range(GRADES)]
    for model, teacher in pairs:
        matrix[model][teacher] += 1
    return matrix


def quadratic_weighted_kappa(matrix: Sequence[Sequence[int]]) -> float | None:
    """Cohen's kappa with quadratic weights over the grades 0..5.

    1 - sum(w * observed) / sum(w * expected), with w[i][j] = (i - j)^2 /
    (K - 1)^2 and the expected counts from the two raters' marginals. None
    when it is undefined: no pairs, or both raters gave one and the same
    grade to everything (no disagreement is possible by chance).
    """
    n = sum(sum(row) for row in matrix)
    if n == 0:
        return None
    model_totals = [sum(row) for row in matrix]
    teacher_totals = [sum(matrix[i][j] for i in range(GRADES)) for j in range(GRADES)]
    observed = expected = 0.0
    for i in range(GRADES):
        for j in range(GRADES):
            weight = (i - j) ** 2 / (GRADES - 1) ** 2
            observed += weight * matrix[i][j]
            expected += weight * model_totals[i] * teacher_totals[j] / n
    if expected == 0.0:
        return None
    return 1.0 - observed / expected


def confidence_band(confidence: float | None) -> str:
    if confidence is None:
        return UNKNOWN
    for lower, name in CONFIDENCE_BANDS:
        if confidence >= lower:
            return name
    return CONFIDENCE_BANDS[-1][1]


@dataclass
class BandFigures:
    n: int = 0
    exact: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "exact_agreement": self.exact / self.n if self.n else None}


@dataclass
class GroupFigures:
    """Agreement of one model and prompt format with the teachers."""

    model: str
    prompt_format: str
    pairs: list[tuple[int, int]] = field(default_factory=list)
    bands: dict[str, BandFigures] = field(default_factory=dict)

    def add(self, model_nota: int, teacher_nota: int, confidence: float | None) -> None:
        self.pairs.append((model_nota, teacher_nota))
        band = self.bands.setdefault(confidence_band(confidence), BandFigures())
        band.n += 1
        band.exact += model_nota == teacher_nota

    def as_dict(self) -> dict[str, Any]:
        n = len(self.pairs)
        exact = sum(m == t for m, t in self.pairs)
        within_one = sum(abs(m - t) <= 1 for m, t in self.pairs)
        matrix = confusion_matrix(self.pairs)
        order = [name for _, name in CONFIDENCE_BANDS] + [UNKNOWN]
        return {
            "model": self.model,
            "prompt_format": self.prompt_format,
            "n": n,
            "exact_agreement": exact / n if n else None,
            "within_one_agreement": within_one / n if n else None,
            "quadratic_weighted_kappa": quadratic_weighted_kappa(matrix),
            "confusion_matrix": matrix,
            "by_confidence": {name: self.bands[name].as_dict() for name in order if name in self.bands},
        }


@dataclass
class AgreementReport:
    groups: list[GroupFigures]
    corrections: int  # the latest correction per result
    of_error_results: int  # corrections of results that were errors: no model grade to compare
    without_result: int  # corrections whose result was not found among the results read
    erased: ErasedSkipped = field(default_factory=ErasedSkipped)  # left out before counting (contract 1.3)

    def as_dict(self) -> dict[str, Any]:
        return {
            "groups": [group.as_dict() for group in self.groups],
            "corrections": self.corrections,
            "of_error_results": self.of_error_results,
            "without_result": self.without_result,
            "erased_skipped": self.erased.as_dict(),
        }


def prompt_format_of(result: GradedItem, item: Item | None) -> str:
    if item is None:
        return UNKNOWN
    return "gemma_finetune" if PromptBuilder.gemma_finetune().build(item).sha256 == result.prompt_sha256 else "other"


def agreement(
    results: Mapping[str, GradedItem],
    corrections: Mapping[str, Correction],
    items: Mapping[str, Item] | None = None,
    *,
    erased: ErasedSkipped | None = None,
) -> AgreementReport:
    """``corrections``: result_id -> the correction that counts (``latest_by_item``), erased
    jobs already left out (``erased`` says how many); ``items``: result_id -> the item graded
    (for the prompt format), when read."""
    groups: dict[tuple[str, str], GroupFigures] = {}
    of_errors = without = 0
    for rid, correction in corrections.items():
        result = results.get(rid)
        if result is None:
            without += 1
            continue
        if not result.ok or result.nota is None:
            of_errors += 1
            continue
        fmt = prompt_format_of(result, (items or {}).get(rid))
        group = groups.setdefault((result.model, fmt), GroupFigures(result.model, fmt))
        group.add(result.nota, correction.nota, result.confidence)
    ordered = [groups[key] for key in sorted(groups)]
    return AgreementReport(ordered, len(corrections), of_errors, without, erased or ErasedSkipped())


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render(report: AgreementReport) -> str:
    """The report for a terminal."""
    lines = []
    for group in report.groups:
        figures = group.as_dict()
        lines += [
            f"model {figures['model']}, prompt format {figures['prompt_format']}",
            f"  n {figures['n']}   exact {_share(figures['exact_agreement'])}"
            f"   within one {_share(figures['within_one_agreement'])}"
            f"   quadratic weighted kappa {_share(figures['quadratic_weighted_kappa'])}",
            "  confusion (rows: model's nota, columns: teacher's nota)",
            "         " + " ".join(f"{grade:>5}" for grade in NOTA_VALUES),
        ]
        for grade, row in zip(NOTA_VALUES, figures["confusion_matrix"], strict=True):
            lines.append(f"  model {grade} " + " ".join(f"{count:>5}" for count in row))
        lines.append("  by confidence: n, exact agreement")
        for band, band_figures in figures["by_confidence"].items():
            lines.append(f"    {band:<8} {band_figures['n']:>5}  {_share(band_figures['exact_agreement'])}")
    if not report.groups:
        lines.append("no corrected ok results to compare")
    lines.append(
        f"{report.corrections} corrections: {report.of_error_results} of error results, "
        f"{report.without_result} without a result read; {report.erased}"
    )
    return "\n".join(lines) + "\n"


def render_json(report: AgreementReport) -> str:
    return json.dumps(report.as_dict(), indent=2) + "\n"
