"""`texteval release-check`: QWK and SMD against reference implementations, verdicts, exit codes.

The fixture (tests/tools/release_fixture.py) is built by construction so the
candidate passes overall and fails in one subgroup; the expected figures are
computed here from the same grades with scikit-learn (QWK) and the standard
library (SMD), not by the code under test.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from consumer.corrections import latest_by_item
from consumer.settings import Settings
from consumer.tools.cli import main
from consumer.tools.loop_sources import load_corrections, load_results
from consumer.tools.release import NOT_ENOUGH, Thresholds, Verdict, release_check, render
from consumer.tools.release_commands import read_subgroups
from tests.tools import release_fixture


def reference_smd(machine: list[int], human: list[int]) -> float:
    """RSMTool's SMD: (mean(machine) - mean(human)) / sqrt((sd(machine)^2 + sd(human)^2) / 2)."""
    pooled = ((statistics.stdev(machine) ** 2 + statistics.stdev(human) ** 2) / 2) ** 0.5
    return float((statistics.fmean(machine) - statistics.fmean(human)) / pooled)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return release_fixture.write(tmp_path)


async def report_from(files: dict[str, Path], **kw: object) -> dict[str, object]:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    corrections = latest_by_item((await load_corrections(settings, str(files["corrections.jsonl"]))).values)
    live = (await load_results(settings, str(files["live.jsonl"]))).values
    candidate = (await load_results(settings, str(files["candidate.jsonl"]))).values
    groups = read_subgroups(files["groups.csv"])
    return release_check(live, candidate, corrections, subgroups=groups, **kw).as_dict()  # type: ignore[arg-type]


async def test_figures_match_the_reference_implementations(files: dict[str, Path]) -> None:
    teacher, live, candidate, groups = release_fixture.build()
    report = await report_from(files)
    models = {m["role"]: m for m in report["models"]}  # type: ignore[attr-defined]
    for role, grades in (("live", live), ("candidate", candidate)):
        figures = models[role]
        assert figures["n"] == len(teacher) == 240
        assert figures["qwk"] == pytest.approx(cohen_kappa_score(grades, teacher, weights="quadratic"), abs=1e-12)
        assert figures["smd"] == pytest.approx(reference_smd(grades, teacher), abs=1e-12)
        assert figures["exact_agreement"] == pytest.approx(
            sum(g == t for g, t in zip(grades, teacher, strict=True)) / 240
        )
        assert figures["within_one_agreement"] == pytest.approx(
            sum(abs(g - t) <= 1 for g, t in zip(grades, teacher, strict=True)) / 240
        )
        for sub in figures["subgroups"]:
            idx = [i for i, g in enumerate(groups) if g == sub["group"]]
            assert sub["n"] == len(idx)
            assert sub["smd"] == pytest.approx(reference_smd([grades[i] for i in idx], [teacher[i] for i in idx]))
    change = models["candidate"]["change_from_live"]
    assert change["qwk"] == pytest.approx(models["candidate"]["qwk"] - models["live"]["qwk"])
    same = sum(a == b for a, b in zip(live, candidate, strict=True)) / 240
    assert models["candidate"]["agreement_with_live"] == pytest.approx(same)


async def test_a_subgroup_failure_the_overall_figure_hides(files: dict[str, Path]) -> None:
    report = await report_from(files)
    candidate = next(m for m in report["models"] if m["role"] == "candidate")  # type: ignore[attr-defined]
    verdicts = {c["name"]: c["verdict"] for c in candidate["criteria"]}
    # Overall the candidate meets every standard...
    assert verdicts["QWK"] == Verdict.PASS
    assert verdicts["|SMD|"] == Verdict.PASS
    assert abs(candidate["smd"]) <= 0.15
    # ...but grades group B higher than its teachers do, which only the subgroup shows.
    assert verdicts["|SMD| B"] == Verdict.FAIL
    assert verdicts["|SMD| A"] == Verdict.PASS
    assert verdicts["|SMD| C"] == Verdict.NOT_JUDGED  # 10 students: reported, not judged
    assert verdicts["QWK vs human-human"] == Verdict.NOT_JUDGED
    assert report["passed"] is False
    # Without group B's bound (a school that gives no subgroups) it passes.
    loose = await report_from(files, thresholds=Thresholds(max_subgroup_smd=1.0))
    assert loose["passed"] is True


async def test_human_agreement_bound(files: dict[str, Path]) -> None:
    limits = Thresholds(human_qwk=0.99, max_qwk_below_human=0.02, max_subgroup_smd=1.0)
    report = await report_from(files, thresholds=limits)
    candidate = next(m for m in report["models"] if m["role"] == "candidate")  # type: ignore[attr-defined]
    verdict = next(c for c in candidate["criteria"] if c["name"] == "QWK vs human-human")
    assert verdict["verdict"] == Verdict.FAIL  # its QWK (0.955) is below 0.99 - 0.02
    assert next(c for c in candidate["criteria"] if c["name"] == "QWK")["verdict"] == Verdict.PASS
    assert report["passed"] is False


async def test_not_enough_corrections_fails(files: dict[str, Path]) -> None:
    report = await report_from(files, thresholds=Thresholds(min_n=500))
    candidate = next(m for m in report["models"] if m["role"] == "candidate")  # type: ignore[attr-defined]
    assert candidate["criteria"] == [
        {"name": "sample size", "verdict": Verdict.FAIL, "detail": f"{NOT_ENOUGH}: 240 < 500"}
    ]
    assert report["passed"] is False


async def test_models_are_compared_on_the_same_items(tmp_path: Path) -> None:
    files = release_fixture.write(tmp_path)
    # A shadow at a sample: the candidate graded the even items only.
    lines = files["candidate.jsonl"].read_text().splitlines()
    files["candidate.jsonl"].write_text("\n".join(lines[::2]) + "\n")
    report = await report_from(files)
    assert report["items_compared"] == 120
    assert all(m["n"] == 120 for m in report["models"])  # type: ignore[attr-defined]


def test_cli_exit_codes_and_json(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "release-check", "--live", str(files["live.jsonl"]), "--candidate", str(files["candidate.jsonl"]),
        "--corrections", str(files["corrections.jsonl"]), "--subgroups", str(files["groups.csv"]), "--erased", "none",
    ]  # fmt: skip
    assert main(base) == 1
    out = capsys.readouterr().out
    assert "FAIL       |SMD| B" in out and "release check: FAIL" in out
    assert "reported, not judged" in out
    assert main([*base, "--max-subgroup-smd", "0.5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True and data["thresholds"]["max_subgroup_smd"] == 0.5
    assert main([*base, "--min-n", "1000"]) == 1
    assert NOT_ENOUGH in capsys.readouterr().out
    # The candidate alone (no live model to compare with): the same verdicts, no change line.
    alone = ["release-check", "--live", "none", *base[3:]]
    assert main([*alone, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [m["role"] for m in data["models"]] == ["candidate"] and data["models"][0]["change_from_live"] is None


def test_render_names_every_criterion() -> None:
    report = release_check(None, {}, {})
    assert "not enough corrections: 0 < 50" in render(report)
