"""The alert rules as Prometheus itself reads them: ``promtool check`` and
``promtool test rules`` (deploy/prometheus/alerts.test.yml, and
alerts.drift.test.yml for the week-over-week alerts: each alert fires on a
bad series and stays quiet on a good one).

promtool comes with the distribution's ``prometheus`` package (``.ci/run``
installs it); where it is absent these tests skip and say so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.gateway.metrics import GatewayMetrics
from consumer.metrics import Metrics
from tests.helpers import REPO

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts.test.yml"
# The week-over-week alerts' tests, at a 1h evaluation_interval (the file says why).
ALERTS_TESTS = (ALERTS_TEST, PROMETHEUS_DIR / "alerts.drift.test.yml")

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; .ci/run does it as root)"
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_names() -> list[str]:
    return [rule["alert"] for group in load(ALERTS)["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    run = promtool("check", "rules", ALERTS)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in run.stdout


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    # The config names the rule file by its path inside the container.
    config = load(PROMETHEUS_DIR / "prometheus.yml")
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(ALERTS)]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config), encoding="utf-8")
    run = promtool("check", "config", local)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in (g for path in ALERTS_TESTS for g in load(path)["tests"]):
        for case in group["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    names = set(alert_names())
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_the_unit_tests_pass() -> None:
    run = promtool("test", "rules", *ALERTS_TESTS)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("SUCCESS") == len(ALERTS_TESTS)


def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    # The same tests against rules whose dead-letter alert wants two: they fail.
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    text = ALERTS.read_text(encoding="utf-8")
    needle = "sum by (reason) (increase(texteval_dead_letters_total[15m])) > 0"
    assert needle in text
    (tmp_path / ALERTS.name).write_text(text.replace(needle, needle[:-1] + "1"), encoding="utf-8")
    run = promtool("test", "rules", tmp_path / ALERTS_TEST.name)
    assert run.returncode != 0 and "TextevalDeadLetters" in run.stdout + run.stderr


def exported_buckets() -> dict[str, set[float]]:
    """Histogram bucket bounds (``le``) the consumer and the gateway export, by series name."""
    text = generate_latest(Metrics().registry).decode() + generate_latest(GatewayMetrics().registry).decode()
    buckets: dict[str, set[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.setdefault(sample.name, set()).add(float(sample.labels["le"]))
    return buckets


def test_unit_tests_use_the_buckets_the_code_exports() -> None:
    # histogram_quantile() never answers above the largest finite bucket, so
    # a synthetic bucket the code lacks could make a dead alert look alive
    # (TextevalSlowProgressEvents was: p99 > 5 s over buckets ending at 2.5 s).
    exported = exported_buckets()
    used = 0
    for group in (g for path in ALERTS_TESTS for g in load(path)["tests"]):
        for series in group["input_series"]:
            name, _, labels = series["series"].partition("{")
            if name.endswith("_bucket"):
                le = float(re.search(r'\ble="([^"]+)"', labels).group(1))  # type: ignore[union-attr]
                assert le in exported[name], f"{name} has no bucket le={le} (exported: {sorted(exported[name])})"
                used += 1
    assert used >= 10
    # The alerts' thresholds sit below the largest finite bucket.
    finite = {name: max(b for b in bounds if b != float("inf")) for name, bounds in exported.items()}
    assert finite["texteval_progress_event_latency_seconds_bucket"] > 5
    assert finite["texteval_commit_latency_seconds_bucket"] > 1
    assert finite["texteval_gateway_event_delivery_latency_seconds_bucket"] > 2
