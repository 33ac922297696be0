"""docs/privacy.md cannot drift: its tables are parsed and compared with what
deploy/kafka/create-topics.sh really configures (the script is run against a
recording stand-in for kafka-topics.sh), the settings' defaults and the code.
And retention holds: every topic's data is gone within its stated retention
plus 10%, the dead letters no later than the requests they copy."""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from consumer.gateway.metrics import GatewayMetrics
from consumer.metrics import Metrics
from consumer.pipeline.jobstate.ledger import Ledger
from consumer.settings import Settings
from consumer.tools.cli import help_text, parse
from tests.helpers import REPO

SCRIPT = REPO / "deploy" / "kafka" / "create-topics.sh"
PRIVACY = REPO / "docs" / "privacy.md"
CHECK_INTERVAL_MS = 300_000  # the broker's log.retention.check.interval.ms default (the script's assumption)
DAY_MS = 86_400_000
DEFAULTS = Settings.defaults()  # the defaults, whatever this machine's environment says
# Labels that would tie a series to a student or a job (a grade count by `nota` ties it to no one).
STUDENT_FIELDS = {"id_alumno", "curso", "consigna", "respuesta", "feedback", "comment", "job_id", "result_id"}


@dataclass
class Topic:
    name: str
    partitions: int
    config: dict[str, str]

    def ms(self, key: str) -> int:
        return int(self.config[key])


def run_script(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Topic]]:
    """Run create-topics.sh with a kafka-topics.sh that records its arguments; the topics it would create."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    record = tmp_path / "calls"
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$RECORD"\n', encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "JOB_", "LOG_RETENTION", "DECISIONS_"))}
    done = subprocess.run(
        ["sh", str(SCRIPT)],
        env=clean | {"KAFKA_TOPICS_SH": str(fake), "RECORD": str(record)} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    topics: dict[str, Topic] = {}
    for line in record.read_text(encoding="utf-8").splitlines() if record.exists() else []:
        args = line.split()
        if "--create" not in args:
            continue
        configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
        name = args[args.index("--topic") + 1]
        partitions = int(args[args.index("--partitions") + 1])
        topics[name] = Topic(name, partitions, dict(c.split("=", 1) for c in configs))
    return done, topics


@pytest.fixture(scope="module")
def topics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Topic]:
    done, created = run_script(tmp_path_factory.mktemp("topics"))
    assert done.returncode == 0, done.stderr
    return created


# --- retention that holds ---------------------------------------------------------------


def test_every_topic_the_code_uses_is_created(topics: dict[str, Topic]) -> None:
    # A shadow's topics too: one may start at any time, and must find them bounded.
    shadow = DEFAULTS.with_(shadow=True, kafka_group_id="texteval-shadow")
    assert set(DEFAULTS.service_topics()) | set(shadow.service_topics()) == set(topics)
    # Job state: partition p holds the jobs of requests partition p.
    requests = topics[DEFAULTS.kafka.requests_topic].partitions
    assert topics[DEFAULTS.kafka.checkpoints_topic].partitions == requests
    assert topics[DEFAULTS.kafka.shadow_checkpoints_topic].partitions == requests
    assert topics[DEFAULTS.kafka.shadow_checkpoints_topic].config == topics[DEFAULTS.kafka.checkpoints_topic].config


def test_every_topic_is_gone_within_its_retention_plus_ten_percent(topics: dict[str, Topic]) -> None:
    for topic in topics.values():
        config = topic.config
        # Retention counts from the broker's clock: a producer's future timestamp cannot extend it.
        assert config["message.timestamp.type"] == "LogAppendTime", topic.name
        assert int(config["segment.bytes"]) >= int(config["max.message.bytes"]), topic.name
        if config.get("cleanup.policy") == "compact":
            continue
        retention, segment = topic.ms("retention.ms"), topic.ms("segment.ms")
        # Deleted at the latest: the newest record of its segment past retention, at the next check.
        assert retention + segment + CHECK_INTERVAL_MS <= 1.1 * retention, topic.name


def test_job_state_records_are_cleaned_within_ten_percent_of_job_id_retention(topics: dict[str, Topic]) -> None:
    state = topics[DEFAULTS.kafka.checkpoints_topic].config
    assert state["cleanup.policy"] == "compact" and "retention.ms" not in state
    retention_ms = DEFAULTS.privacy.job_id_retention_s * 1000
    # The running consumer writes the tombstone within one expiry period of the retention; its
    # segment closes within segment.ms, and the cleaner then runs within max.compaction.lag.ms
    # (plus log.cleaner.backoff.ms, 15 s by default).
    expire_every_ms = inspect.signature(Ledger).parameters["expire_every_s"].default * 1000
    lag = max(int(state["segment.ms"]), int(state["max.compaction.lag.ms"]))
    assert expire_every_ms + lag + 15_000 <= 0.1 * retention_ms
    data_map = table("| place | holds | kept for |")
    assert f"every {duration_text(expire_every_ms)}" in data_map[DEFAULTS.kafka.checkpoints_topic][4]
    assert int(state["delete.retention.ms"]) <= DAY_MS  # the tombstone holds a job_id only


def test_dead_letters_are_kept_no_longer_than_what_they_copy(topics: dict[str, Topic]) -> None:
    def retention(name: str) -> int:
        return topics[name].ms("retention.ms")

    assert retention(DEFAULTS.kafka.dlt_topic) <= retention(DEFAULTS.kafka.requests_topic)
    assert retention(DEFAULTS.kafka.corrections_dlt_topic) <= retention(DEFAULTS.kafka.corrections_topic)
    # A cancel must be readable for as long as consumers honour it.
    assert retention(DEFAULTS.kafka.control_topic) >= DEFAULTS.kafka.cancel_ttl_s * 1000


def test_the_dlt_retention_is_settable_and_a_retention_too_short_to_bound_is_refused(tmp_path: Path) -> None:
    done, created = run_script(tmp_path / "longer", KAFKA_DLT_RETENTION_MS=str(30 * DAY_MS))
    assert done.returncode == 0 and "longer than the requests topic" in done.stderr
    assert created[DEFAULTS.kafka.dlt_topic].ms("retention.ms") == 30 * DAY_MS
    # Too short for segment.ms to keep it within 10% (the check interval alone is 5 minutes): nothing is created.
    done, created = run_script(tmp_path / "short", KAFKA_DLT_RETENTION_MS="60000")
    assert done.returncode != 0 and "too short" in done.stderr and created == {}


def test_job_state_segments_follow_the_job_id_retention_setting(tmp_path: Path) -> None:
    done, created = run_script(tmp_path, JOB_ID_RETENTION_S="86400.0")  # a float, as Settings accepts
    assert done.returncode == 0, done.stderr
    assert int(created[DEFAULTS.kafka.checkpoints_topic].config["segment.ms"]) + CHECK_INTERVAL_MS <= 0.1 * DAY_MS


# --- docs/privacy.md ------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(minute|hour|day|week)s?\b")
_UNIT_MS = {"minute": 60_000, "hour": 3_600_000, "day": DAY_MS, "week": 7 * DAY_MS}


def duration_ms(text: str) -> float:
    """The first duration in a cell: "7 days after the job ends" -> 7 days in ms."""
    match = _DURATION.search(text)
    assert match, f"no duration in {text!r}"
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def duration_text(ms: float) -> str:
    """The doc's words for a duration: 60000 -> "1 minute"."""
    for unit in ("week", "day", "hour", "minute"):
        count = ms / _UNIT_MS[unit]
        if count >= 1 and count.is_integer():
            return f"{int(count)} {unit}" + ("s" if count != 1 else "")
    raise AssertionError(f"{ms} ms is no whole number of minutes")


def table(heading_row: str) -> dict[str, list[str]]:
    """The table whose header row starts with ``heading_row``: first cell (backticks stripped) -> cells."""
    lines = PRIVACY.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_row))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].split(" (")[0].strip("`")] = cells
    return rows


def test_the_data_map_lists_every_topic_with_its_real_retention(topics: dict[str, Topic]) -> None:
    data_map = table("| place | holds | kept for |")
    for name, topic in topics.items():
        assert name in data_map, f"docs/privacy.md has no row for {name}"
        kept = data_map[name][2]
        if topic.config.get("cleanup.policy") == "compact":
            assert duration_ms(kept) == DEFAULTS.privacy.job_id_retention_s * 1000 and "JOB_ID_RETENTION_S" in kept
        else:
            assert duration_ms(kept) == topic.ms("retention.ms"), name
    assert duration_ms(data_map["gateway memory"][2]) == DEFAULTS.gateway.job_ttl_seconds * 1000
    assert "JOB_TTL_SECONDS" in data_map["gateway memory"][2]
    for place in ("consumer memory", "files the CLI writes", "browser downloads", "logs", "metrics"):
        assert place in data_map, place


def test_the_retention_table_is_what_the_script_sets(topics: dict[str, Topic]) -> None:
    rows = table("| topic | `retention.ms` |")
    assert set(rows) == set(topics)
    for name, topic in topics.items():
        _, retention, segment, latest = rows[name]
        segment_ms = topic.ms("segment.ms")
        assert duration_ms(segment) == pytest.approx(segment_ms, abs=0.05 * _UNIT_MS["hour"]), name
        stated = (
            topic.ms("retention.ms") if "retention.ms" in topic.config else DEFAULTS.privacy.job_id_retention_s * 1000
        )
        assert duration_ms(retention) == stated, name
        bound = stated + segment_ms + CHECK_INTERVAL_MS
        assert duration_ms(latest) == pytest.approx(bound, abs=0.05 * DAY_MS), name


def commands() -> dict[str, str]:
    """``texteval``'s commands and each one's ``--help``, as a user sees them."""
    top = help_text().split("commands:", 1)[1].split("\n\n", 1)[0]
    names = re.findall(r"^    ([a-z][a-z-]*)", top, re.MULTILINE)
    helps = {}
    for name in names:
        with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
            parse([name, "--help"])
        helps[name] = out.getvalue()
    assert {"run", "submit", "grade"} <= set(helps)
    return helps


def test_every_command_that_writes_a_file_is_in_the_data_map() -> None:
    files = table("| place | holds | kept for |")["files the CLI writes"][1]
    # These write no student data: the settings reference and the JSON Schemas.
    no_student_data = {"config-docs", "schemas"}
    for name, usage in commands().items():
        for option in re.findall(r"(--out|--manifest)\b", usage.split("\n\n", 1)[0]):
            if name not in no_student_data:
                assert f"`texteval {name} {option}`" in files, f"docs/privacy.md: `texteval {name} {option}`"


def test_metrics_carry_no_student_data_or_job_ids() -> None:
    labels: set[str] = set()
    for registry in (Metrics().registry, GatewayMetrics().registry):
        for family in registry.collect():
            for sample in family.samples:
                labels |= set(sample.labels)
    assert labels and not labels & STUDENT_FIELDS, labels & STUDENT_FIELDS


def test_the_kubernetes_settings_keep_data_as_long_as_the_data_map_says() -> None:
    config = yaml.safe_load((REPO / "deploy" / "k8s" / "configmap.yaml").read_text(encoding="utf-8"))["data"]
    deployed = Settings.model_validate({k: v for k, v in config.items() if k.endswith(("_S", "_SECONDS"))})
    for section, field in (
        ("privacy", "job_id_retention_s"),
        ("kafka", "cancel_ttl_s"),
        ("gateway", "job_ttl_seconds"),
    ):
        assert getattr(getattr(deployed, section), field) == getattr(getattr(DEFAULTS, section), field), field


def test_the_data_map_says_whether_erasure_exists() -> None:
    erasing = PRIVACY.read_text(encoding="utf-8").split("## Erasing a job", 1)[1].split("\n## ", 1)[0]
    # Until `texteval erase` exists the page must say so; once it does, it must stop saying so.
    assert ("erase" in commands()) != ("Not built" in erasing)
