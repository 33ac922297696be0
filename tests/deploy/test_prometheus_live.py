"""A real Prometheus scrapes a running consumer and gateway while jobs flow; then every
dashboard query and every alert expression is evaluated through its HTTP API
and must return data for the series the run produced.

Checked here (and not by reading the PromQL): the query parses, its labels
and functions match what the service exports, its windows see the samples,
its divisions are not always empty, and the rules evaluate without error.
Alerts that stay quiet on a healthy run are also evaluated operand by
operand without their thresholds; that they fire on bad series is
``promtool test rules`` (tests/deploy/test_prometheus_rules.py).

Prometheus comes with the distribution's ``prometheus`` package (``.ci/run``
installs it); where it is absent the test skips and says so. About 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from consumer.testing.processes import ServiceProcess, service_env
from consumer.testing.topics import (
    TopicNames,
    at_least,
    count_events,
    create_topics,
    items,
    job,
    make_settings,
    produce,
    read_until,
)
from consumer.tools.broker import free_port
from tests.helpers import REPO

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "texteval.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
# Grafana's variables, as a dashboard on a 15 s scrape resolves them.
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "1m"}
# Metrics of a component a run does not scrape make its panels skip (say,
# the gateway's, if its target line below is removed).
OPTIONAL_PREFIXES = {
    "texteval_gateway_": "the gateway (texteval gateway) is not among the scrape targets",
}
# Week-over-week comparisons (the drift alerts, "a week before" lines) look at data
# a week old, which this run has not: their data is required without the offset
# (the same series, labels and matching); the expression itself is evaluated as is.
OFFSET = re.compile(r"\s+offset\s+\d+[smhdwy]\b")


def this_week(expr: str) -> str:
    return OFFSET.sub("", expr)


pytestmark = [
    pytest.mark.kafka,
    pytest.mark.process,
    pytest.mark.skipif(
        PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus; .ci/run does it as root)"
    ),
]


@dataclass(frozen=True)
class Target:
    job: str  # the scrape job's name: the `job` label the rules select on
    port: int


class PrometheusServer:
    """One Prometheus on a free loopback port, with its own data dir and a
    generated config: 1 s scrapes of the targets, the repository's rules."""

    def __init__(self, workdir: Path, targets: list[Target]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._workdir = workdir
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": t.job, "static_configs": [{"targets": [f"127.0.0.1:{t.port}"]}]} for t in targets
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> None:
        assert PROMETHEUS is not None
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self._workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self._workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            assert self._proc.poll() is None, f"prometheus exited: {self.log_tail()}"
            assert time.monotonic() < deadline, f"prometheus not ready in {timeout_s} s: {self.log_tail()}"
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        reply = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = reply.json()
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, time=f"{at:.3f}")
        assert data["resultType"] == "vector", data["resultType"]
        result: list[dict[str, Any]] = data["result"]
        return result

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class Run:
    prometheus: PrometheusServer
    at: float  # evaluation time: every job done and scraped
    metric_names: set[str]  # every series name Prometheus scraped


async def wait_for_data(prometheus: PrometheusServer, expr: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not prometheus.query(expr, time.time()):
        assert time.monotonic() < deadline, f"no data for {expr} in {timeout_s} s"
        await asyncio.sleep(0.25)


class GatewayProcess:
    """``texteval gateway`` as its own process on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = env
        self._log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout_s: float = 60) -> GatewayProcess:
        with self._log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "consumer.tools.cli", "gateway", "--host", "127.0.0.1", "--port", str(self.port),
                cwd=REPO, env=self._env, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.url, timeout=1) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        return self
                assert self._proc.returncode is None, f"gateway exited: {self._log_path.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"gateway not healthy: {self._log_path.read_text()[-2000:]}"
                await asyncio.sleep(0.1)

    async def follow(self, job_id: str, job_items: list[dict[str, str]]) -> None:
        """Submit a job over HTTP and read its stream to the end, as a browser does."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            (await client.post("/evaluate", json={"job_id": job_id, "items": job_items})).raise_for_status()
            async with client.stream("GET", f"/stream/{job_id}") as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data:") and json.loads(line[5:])["event"] == "complete":
                        return

    async def close(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 15)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()


@pytest.fixture(scope="module")
async def run(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Run]:
    workdir = tmp_path_factory.mktemp("prometheus")
    topics = TopicNames.unique()
    control = f"{topics.requests}.control"
    await create_topics(kafka_bootstrap, [*topics, control])
    settings = make_settings(kafka_bootstrap, topics, kafka_group_kwargs, KAFKA_CONTROL_TOPIC=control)
    consumer = await ServiceProcess(settings, workdir, "consumer", delay_ms=50).start()
    gateway = GatewayProcess(service_env(settings), workdir / "gateway.log")
    prometheus: PrometheusServer | None = None
    try:
        await consumer.wait_healthy()
        await gateway.start()
        # One line per scrape target; the job names are the ones the rules select.
        targets = [
            Target("texteval", consumer.port),
            Target("texteval-gateway", gateway.port),
        ]
        prometheus = PrometheusServer(workdir, targets)
        prometheus.start()
        # Scrapes before the jobs, so counters are seen at 0 first.
        await wait_for_data(prometheus, f'count(up{{job=~"texteval.*"}} == 1) == {len(targets)}')
        await asyncio.sleep(2)
        mixed = items(10, prefix="L")
        for item in mixed[:6]:
            item["respuesta"] = "paraula " * 2400  # past the fake engine's context: input_too_long
        jobs = [(b"a", job("prom-a", items(40))), (b"b", job("prom-b", mixed)), (b"c", job("prom-c", items(30)))]
        await produce(kafka_bootstrap, topics.requests, [*jobs, (b"bad", b"{")])
        await gateway.follow("prom-gw", items(5, prefix="G"))
        await read_until(kafka_bootstrap, topics.progress, count_events("complete", len(jobs) + 1))
        await read_until(kafka_bootstrap, topics.dlt, at_least(1))
        # Scraped after the work: the last result, the commit, the lag.
        await wait_for_data(prometheus, f"sum(texteval_jobs_completed_total) >= {len(jobs) + 1}")
        await wait_for_data(prometheus, "sum(texteval_gateway_events_delivered_total) > 0")
        await wait_for_data(prometheus, "sum(texteval_dead_letters_total) >= 1")
        await wait_for_data(prometheus, "texteval_consumer_lag")
        await asyncio.sleep(2)  # one more evaluation of the rules
        names = set(prometheus.api("label/__name__/values"))
        yield Run(prometheus, time.time(), names)
    finally:
        if prometheus is not None:
            prometheus.close()
        await gateway.close()
        await consumer.close()


def dashboard_queries() -> list[Any]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    params = []
    for panel in dashboard["panels"]:
        for number, target in enumerate(panel.get("targets", [])):
            params.append(pytest.param(panel["title"], target["expr"], id=f"{panel['title']} #{number}"))
    return params


def alert_rules() -> list[Any]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [pytest.param(rule["alert"], rule["expr"], id=rule["alert"]) for g in groups for rule in g["rules"]]


def resolve(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unresolved Grafana variable in {expr}"
    return expr


def require_data(run: Run, expr: str, where: str) -> list[dict[str, Any]]:
    result = run.prometheus.query(expr, run.at)
    if result:
        return result
    absent = {name for name in re.findall(r"\b(?:texteval_\w+|up)\b", expr) if name not in run.metric_names}
    for prefix, reason in OPTIONAL_PREFIXES.items():
        if absent and all(name.startswith(prefix) for name in absent):
            pytest.skip(f"{where}: {sorted(absent)} absent from the scrape: {reason}")
    assert not absent, f"{where}: {sorted(absent)} never scraped: {expr}"
    raise AssertionError(f"{where}: empty vector although every metric was scraped: {expr}")


def positive(result: list[dict[str, Any]]) -> bool:
    return any(float(sample["value"][1]) > 0 for sample in result)


# Panels whose value this run must make positive (one dead letter, 6 error
# results, 85 texts graded, one job followed through the gateway): a window or a counter that misses the run's work
# answers 0 here.
MUST_BE_POSITIVE = {
    "Texts graded / s",
    "Error results (1 h)",
    "Dead letters (24 h)",
    "Texts graded / s by status",
    "Error results / s by code",
    "Jobs accepted and completed / min",
    "Dead letters by reason",
    "Gateway reads progress",
    "Gateway requests / s by route and status",
    "SSE events delivered / s",
}


@pytest.mark.parametrize(("title", "expr"), dashboard_queries())
def test_dashboard_query_returns_data(run: Run, title: str, expr: str) -> None:
    run.prometheus.query(resolve(expr), run.at)  # parses and evaluates, offsets and all
    result = require_data(run, this_week(resolve(expr)), f"panel {title!r}")
    if title in MUST_BE_POSITIVE:
        assert positive(result), f"panel {title!r}: only zeros after the run: {result}"


def test_dashboard_instance_variable_lists_the_consumer(run: Run) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for variable in dashboard["templating"]["list"]:
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"]).groups()  # type: ignore[union-attr]
        values = run.prometheus.api(f"label/{label}/values", **{"match[]": metric})
        assert values, f"variable {variable['name']}: no {label} on {metric}"


SET_OPERATOR = re.compile(r"\s(?:and|or|unless)(?:\s+on\s*\([^)]*\))?\s", re.IGNORECASE)
THRESHOLD = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*[-+]?[\d.]+(?:e[-+]?\d+)?\s*$")


def operands(expr: str) -> list[str]:
    """The data an alert looks at: its expression split at top-level set
    operators, each without its threshold; ``absent(x)`` looks at ``x``."""
    parts, depth, start = [], 0, 0
    for match in re.finditer(r"[()]|" + SET_OPERATOR.pattern, expr, re.IGNORECASE):
        token = match.group(0)
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif depth == 0:
            parts.append(expr[start : match.start()])
            start = match.end()
    parts.append(expr[start:])
    inner = [THRESHOLD.sub("", part.strip()) for part in parts]
    return [re.sub(r"^absent\((.*)\)$", r"\1", part, flags=re.DOTALL) for part in inner]


def test_operands_of_an_alert() -> None:
    assert operands("max by (instance) (a) > 0\nunless on (instance)\nsum by (instance) (rate(b[10m])) > 0") == [
        "max by (instance) (a)",
        "sum by (instance) (rate(b[10m]))",
    ]
    assert operands('absent(up{job="x"})') == ['up{job="x"}']
    assert operands("x == 0 or y == 0") == ["x", "y"]
    ratio = "sum(rate(a[5m])) / scalar(sum(rate(b[5m])))"
    assert operands(f"{ratio} > 0.05") == [ratio]


@pytest.mark.parametrize(("alert", "expr"), alert_rules())
def test_alert_expression_evaluates_on_real_data(run: Run, alert: str, expr: str) -> None:
    run.prometheus.query(expr, run.at)  # parses and evaluates (empty while healthy is fine)
    for operand in operands(expr):
        require_data(run, this_week(operand), f"alert {alert}: {operand!r}")


def test_keda_query_gives_one_number(run: Run) -> None:
    # KEDA's Prometheus scaler wants exactly one sample.
    docs = yaml.safe_load_all((REPO / "deploy" / "k8s" / "keda.yaml").read_text(encoding="utf-8"))
    (scaled,) = [doc for doc in docs if doc["kind"] == "ScaledObject"]
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    (sample,) = require_data(run, trigger["metadata"]["query"], "keda.yaml")
    assert float(sample["value"][1]) >= 0


def test_rules_evaluate_without_errors_and_fire_on_the_runs_faults(run: Run) -> None:
    rules = [rule for group in run.prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert len(rules) == len(alert_rules())
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    states = {alert["labels"]["alertname"]: alert["state"] for alert in run.prometheus.api("alerts")["alerts"]}
    # The run sent one dead letter (no "for": firing at once) and 6 error
    # results out of 85 (over 5 %: pending its 15 minutes).
    assert states.get("TextevalDeadLetters") == "firing", states
    assert states.get("TextevalErrorResults") in {"pending", "firing"}, states
    quiet_while_healthy = (
        "TextevalDown", "TextevalAbsent", "TextevalUnhealthy", "TextevalConsumerLagGrowing",
        "TextevalGatewayDown", "TextevalGatewayCannotReadProgress",
    )  # fmt: skip
    for quiet in quiet_while_healthy:
        assert quiet not in states, states
