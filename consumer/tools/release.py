"""``texteval release-check``: may a candidate model replace the live one? Judged against the teachers.

The standards are automated scoring's (Williamson, Xi & Breyer 2012, as ETS
and RSMTool apply them), each a ``Thresholds`` field so a school can be
stricter:

- quadratic weighted kappa (QWK) against the teachers >= 0.70;
- when the human-human QWK is known, no more than 0.10 below it;
- |SMD| <= 0.15 overall and <= 0.10 in each subgroup the school provides,
  where SMD = (mean(machine) - mean(human)) / pooled SD and
  pooled SD = sqrt((var(machine) + var(human)) / 2), sample variances
  (n - 1), as RSMTool's "SMD" column. A positive SMD: the machine grades
  higher than the teachers. Subgroups of fewer than ``min_subgroup_n`` are
  reported, not judged: an SMD of ten students says little;
- at least ``min_n`` corrected items, else the verdict is "not enough
  corrections" and the check fails: a pass on twelve items is no pass.

The teacher's grade of an item is its correction (the one applied last; a
correction that keeps the grade is an agreement). Both models are measured
on the same items: those the teachers corrected and both models graded ok
(a shadow graded only a sample). What it does not say: teachers correct
what they look at, so these are figures on the reviewed items.

Pure: the loading is ``consumer.tools.loop_sources``'; the QWK is
``consumer.tools.agreement``'s (checked against scikit-learn's in its test).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from consumer.corrections import Correction
from consumer.tools.agreement import confusion_matrix, quadratic_weighted_kappa
from consumer.tools.loop_sources import GradedItem

NOT_ENOUGH = "not enough corrections"


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_qwk: float = 0.70
    human_qwk: float | None = None  # the teachers' agreement with each other, when measured
    max_qwk_below_human: float = 0.10
    max_smd: float = 0.15
    max_subgroup_smd: float = 0.10
    min_subgroup_n: int = 30  # smaller groups: reported, not judged
    min_n: int = 50  # fewer corrected items: "not enough corrections", fail


def standardized_mean_difference(machine: Sequence[int], human: Sequence[int]) -> float | None:
    """(mean(machine) - mean(human)) / sqrt((var(machine) + var(human)) / 2), sample variances.

    None when it is undefined: fewer than two pairs, or neither rater varies.
    """
    n = len(machine)
    if n < 2 or len(human) != n:
        return None
    mean_m, mean_h = sum(machine) / n, sum(human) / n
    var_m = sum((x - mean_m) ** 2 for x in machine) / (n - 1)
    var_h = sum((x - mean_h) ** 2 for x in human) / (n - 1)
    pooled = math.sqrt((var_m + var_h) / 2)
    return None if pooled == 0 else (mean_m - mean_h) / pooled


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NOT_JUDGED = "not judged"  # no threshold given (human QWK unknown) or a group too small


@dataclass(frozen=True, slots=True)
class Criterion:
    name: str
    verdict: Verdict
    detail: str


@dataclass
class SubgroupFigures:
    group: str
    n: int
    smd: float | None
    judged: bool


@dataclass
class ModelFigures:
    model: str
    role: str  # "live" or "candidate"
    n: int
    exact_agreement: float | None
    within_one_agreement: float | None
    qwk: float | None
    smd: float | None
    subgroups: list[SubgroupFigures] = field(default_factory=list)
    # candidate only: its figures minus the live model's, and how often it gives the live grade
    change_from_live: dict[str, float | None] | None = None
    agreement_with_live: float | None = None
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.verdict is not Verdict.FAIL for c in self.criteria)


@dataclass
class ReleaseReport:
    models: list[ModelFigures]
    corrections: int  # corrections that count (latest per result)
    items_compared: int  # corrected items every model graded ok
    thresholds: Thresholds

    @property
    def passed(self) -> bool:
        """Every criterion of the candidate (or of the only model given) passes."""
        judged = [m for m in self.models if m.role == "candidate"] or self.models
        return bool(judged) and all(m.passed for m in judged)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "corrections": self.corrections,
            "items_compared": self.items_compared,
            "thresholds": asdict(self.thresholds),
            "models": [
                {**asdict(m), "passed": m.passed, "criteria": [asdict(c) for c in m.criteria]} for m in self.models
            ],
        }


def _share(hits: int, n: int) -> float | None:
    return hits / n if n else None


def _figures(
    model: str,
    role: str,
    pairs: list[tuple[str, int, int]],  # (id_alumno, machine, teacher)
    subgroups: Mapping[str, str] | None,
    limits: Thresholds,
) -> ModelFigures:
    n = len(pairs)
    machine = [m for _, m, _ in pairs]
    human = [t for _, _, t in pairs]
    figures = ModelFigures(
        model=model,
        role=role,
        n=n,
        exact_agreement=_share(sum(m == t for m, t in zip(machine, human, strict=True)), n),
        within_one_agreement=_share(sum(abs(m - t) <= 1 for m, t in zip(machine, human, strict=True)), n),
        qwk=quadratic_weighted_kappa(confusion_matrix(zip(machine, human, strict=True))),
        smd=standardized_mean_difference(machine, human),
    )
    if subgroups is not None:
        by_group: dict[str, list[tuple[int, int]]] = {}
        for student, m, t in pairs:
            by_group.setdefault(subgroups.get(student, "(no group)"), []).append((m, t))
        for group in sorted(by_group):
            grades = by_group[group]
            figures.subgroups.append(
                SubgroupFigures(
                    group=group,
                    n=len(grades),
                    smd=standardized_mean_difference([m for m, _ in grades], [t for _, t in grades]),
                    judged=len(grades) >= limits.min_subgroup_n,
                )
            )
    figures.criteria = _criteria(figures, limits)
    return figures


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _criteria(f: ModelFigures, limits: Thresholds) -> list[Criterion]:
    if f.n < limits.min_n:
        return [Criterion("sample size", Verdict.FAIL, f"{NOT_ENOUGH}: {f.n} < {limits.min_n}")]
    out = [Criterion("sample size", Verdict.PASS, f"n {f.n} >= {limits.min_n}")]

    def bound(name: str, value: float | None, ok: bool, text: str) -> None:
        # An undefined figure (no variance at all) cannot show the model meets the standard.
        out.append(Criterion(name, Verdict.FAIL if value is None or not ok else Verdict.PASS, text))

    qwk = f.qwk
    bound("QWK", qwk, qwk is not None and qwk >= limits.min_qwk, f"{_fmt(qwk)} >= {limits.min_qwk:.2f}")
    if limits.human_qwk is None:
        out.append(Criterion("QWK vs human-human", Verdict.NOT_JUDGED, "human-human QWK not given (--human-qwk)"))
    else:
        floor = limits.human_qwk - limits.max_qwk_below_human
        bound("QWK vs human-human", qwk, qwk is not None and qwk >= floor,
              f"{_fmt(qwk)} >= {limits.human_qwk:.3f} - {limits.max_qwk_below_human:.2f}")  # fmt: skip
    smd = f.smd
    bound("|SMD|", smd, smd is not None and abs(smd) <= limits.max_smd, f"|{_fmt(smd)}| <= {limits.max_smd:.2f}")
    for group in f.subgroups:
        name = f"|SMD| {group.group}"
        if not group.judged:
            detail = f"{_fmt(group.smd)}, n {group.n} < {limits.min_subgroup_n}: reported, not judged"
            out.append(Criterion(name, Verdict.NOT_JUDGED, detail))
            continue
        ok = group.smd is not None and abs(group.smd) <= limits.max_subgroup_smd
        bound(name, group.smd, ok, f"|{_fmt(group.smd)}| <= {limits.max_subgroup_smd:.2f} (n {group.n})")
    return out


def release_check(
    live: Mapping[str, GradedItem] | None,
    candidate: Mapping[str, GradedItem] | None,
    corrections: Mapping[str, Correction],
    *,
    subgroups: Mapping[str, str] | None = None,
    thresholds: Thresholds | None = None,
) -> ReleaseReport:
    """``live``/``candidate``: result_id -> result (either may be None, not both); ``corrections``:
    result_id -> the correction that counts; ``subgroups``: id_alumno -> group."""
    limits = thresholds or Thresholds()
    sources = [(role, results) for role, results in (("live", live), ("candidate", candidate)) if results is not None]
    if not sources:
        raise ValueError("release_check needs the live results, a candidate's, or both")

    def graded(results: Mapping[str, GradedItem], rid: str) -> GradedItem | None:
        result = results.get(rid)
        return result if result is not None and result.ok and result.nota is not None else None

    common = [rid for rid in sorted(corrections) if all(graded(r, rid) is not None for _, r in sources)]
    models = []
    for role, results in sources:
        pairs = []
        names: dict[str, int] = {}
        for rid in common:
            result = results[rid]
            assert result.nota is not None  # graded() above
            pairs.append((result.id_alumno, result.nota, corrections[rid].nota))
            names[result.model] = names.get(result.model, 0) + 1
        model = max(names, key=lambda name: names[name]) if names else "(none)"
        models.append(_figures(model, role, pairs, subgroups, limits))
    if live is not None and candidate is not None:
        before, after = models
        after.change_from_live = {
            key: None if (a := getattr(after, key)) is None or (b := getattr(before, key)) is None else a - b
            for key in ("exact_agreement", "within_one_agreement", "qwk", "smd")
        }
        same = sum(live[rid].nota == candidate[rid].nota for rid in common)
        after.agreement_with_live = _share(same, len(common))
    return ReleaseReport(models, len(corrections), len(common), limits)


def render(report: ReleaseReport) -> str:
    """The report for a terminal: figures per model, then one verdict line per criterion."""
    lines = [f"{report.items_compared} corrected items compared ({report.corrections} corrections)"]
    for m in report.models:
        lines.append(f"{m.role} model {m.model}")
        lines.append(
            f"  n {m.n}   exact {_fmt(m.exact_agreement)}   within one {_fmt(m.within_one_agreement)}"
            f"   QWK {_fmt(m.qwk)}   SMD {_fmt(m.smd)}"
        )
        for g in m.subgroups:
            note = "" if g.judged else "  (reported, not judged)"
            lines.append(f"  subgroup {g.group}: n {g.n}   SMD {_fmt(g.smd)}{note}")
        if m.change_from_live is not None:
            change = "   ".join(f"{k} {'n/a' if v is None else f'{v:+.3f}'}" for k, v in m.change_from_live.items())
            lines.append(f"  change from live: {change}")
            lines.append(f"  same grade as live: {_fmt(m.agreement_with_live)}")
        for c in m.criteria:
            lines.append(f"  {c.verdict.value.upper():<10} {c.name}: {c.detail}")
    lines.append("release check: " + ("PASS" if report.passed else "FAIL"))
    return "\n".join(lines) + "\n"


def render_json(report: ReleaseReport) -> str:
    return json.dumps(report.as_dict(), indent=2) + "\n"
