"""The week-over-week alerts on grades and teachers' agreement (alerts.yml, group
texteval-grades): their promtool tests (alerts.drift.test.yml) notice when a
threshold or a volume floor changes, in either direction. (That they pass is
tests/deploy/test_prometheus_rules.py.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
DRIFT_TEST = PROMETHEUS_DIR / "alerts.drift.test.yml"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; .ci/run does it as root)"
)

# (the alert, a line of its expression, that line changed): each change must make a test fail.
CHANGES = [
    # Fires on a 20-point move no longer: the bad model goes unseen.
    ("TextevalReviewShareMoved", "          ) > 0.1\n", "          ) > 0.25\n"),
    # A lower volume floor: the quiet model's 96 grades a day fire.
    (
        "TextevalGradeDistributionMoved",
        "          sum by (model) (increase(texteval_grades_total[1d])) >= 200\n",
        "          sum by (model) (increase(texteval_grades_total[1d])) >= 50\n",
    ),
    # A lower volume floor: school-c's 30 grades in 6 hours fire.
    (
        "TextevalInjectionShareJumped",
        "          sum by (tenant) (increase(texteval_tenant_grades_total[6h])) >= 50\n",
        "          sum by (tenant) (increase(texteval_tenant_grades_total[6h])) >= 20\n",
    ),
    # A 2-point move: school-d's 1 % -> 4 % fires.
    (
        "TextevalInjectionShareJumped",
        "          > 0.05\n",
        "          > 0.02\n",
    ),
    # A lower floor of corrections: 84 a week fire.
    (
        "TextevalTeacherAgreementFell",
        '          sum(increase(texteval_gateway_corrections_total{agreement!="unknown"}[7d])) >= 100\n',
        '          sum(increase(texteval_gateway_corrections_total{agreement!="unknown"}[7d])) >= 50\n',
    ),
]


def test_the_drift_tests_pass_on_the_rules_as_they_are(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    run = subprocess.run([PROMTOOL, "test", "rules", DRIFT_TEST], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


@pytest.mark.parametrize(("alert", "line", "changed"), CHANGES, ids=[c[0] for c in CHANGES])
def test_the_drift_tests_catch_a_changed_threshold(tmp_path: Path, alert: str, line: str, changed: str) -> None:
    assert PROMTOOL is not None
    text = ALERTS.read_text(encoding="utf-8")
    rule = text[text.index(f"- alert: {alert}\n") :]
    rule = rule[: rule.find("- alert:", 1)] if "- alert:" in rule[1:] else rule
    assert rule.count(line) == 1, f"{alert}: {line!r} is not in its expression once"
    (tmp_path / ALERTS.name).write_text(text.replace(rule, rule.replace(line, changed)), encoding="utf-8")
    # Only the groups that test this alert: each step of a group evaluates every rule (seconds a group).
    tests = yaml.safe_load(DRIFT_TEST.read_text(encoding="utf-8"))
    tests["tests"] = [g for g in tests["tests"] if any(c["alertname"] == alert for c in g["alert_rule_test"])]
    (tmp_path / DRIFT_TEST.name).write_text(yaml.safe_dump(tests), encoding="utf-8")
    run = subprocess.run([PROMTOOL, "test", "rules", tmp_path / DRIFT_TEST.name], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode != 0, f"{alert} with {changed.strip()!r}: the tests still pass"
    assert f"alertname: {alert}," in run.stdout + run.stderr
