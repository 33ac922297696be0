"""The erasure answer (contract 1.2) as a unit: which places are erased at once, and until
when each topic may still hold the job's data, from deploy/kafka/create-topics.sh's values
(the script is run, as in tests/deploy/test_privacy.py, so the answer cannot drift)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from consumer.contract import ControlAction, ControlCommand
from consumer.erasure import (
    RETENTION_CHECK_S,
    erase_answer,
    erase_command,
    honoured,
    retained_places,
)
from consumer.settings import Settings
from tests.deploy.test_privacy import DEFAULTS, Topic, run_script

NOW_S = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.fixture(scope="module")
def topics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Topic]:
    done, created = run_script(Path(tmp_path_factory.mktemp("erasure")))
    assert done.returncode == 0, done.stderr
    return created


def test_every_retained_place_is_a_topic_the_script_creates_with_the_same_retention_and_segments(
    topics: dict[str, Topic],
) -> None:
    places = retained_places(DEFAULTS, NOW_S)
    kafka = DEFAULTS.kafka
    assert {p.topic for p in places} == {
        kafka.requests_topic, kafka.results_topic, kafka.progress_topic, kafka.dlt_topic,
        kafka.corrections_topic, kafka.corrections_dlt_topic, kafka.shadow_results_topic,
    }  # fmt: skip
    for place in places:
        topic = topics[place.topic]
        assert place.retention_s * 1000 == topic.ms("retention.ms"), place.topic
        assert place.segment_s * 1000 == topic.ms("segment.ms"), place.topic
        # Gone at the latest: retention + the segment's open time + the broker's check; within 10%.
        assert place.gone_by_s == NOW_S + place.retention_s + place.segment_s + RETENTION_CHECK_S
        assert place.retention_s < place.gone_by_s - NOW_S <= 1.1 * place.retention_s


def test_every_topic_that_holds_student_data_is_in_the_answer(topics: dict[str, Topic]) -> None:
    # The two others hold no text, name or grade: the job state (erased at once) and the control topic;
    # the decision records (no text, no name) are named apart, as kept on purpose.
    answer = erase_answer(DEFAULTS, "school-42/term-1", NOW_S)
    named = {p["place"] for p in answer["erased_now"]} | {p["place"] for p in answer["kept_until_retention"]}  # type: ignore[attr-defined]
    assert set(topics) - named == {DEFAULTS.kafka.control_topic, DEFAULTS.kafka.decisions_topic}
    assert [p["place"] for p in answer["records_kept"]] == [DEFAULTS.kafka.decisions_topic]  # type: ignore[attr-defined]
    erased = {p["place"] for p in answer["erased_now"]}  # type: ignore[attr-defined]
    assert {DEFAULTS.kafka.checkpoints_topic, DEFAULTS.kafka.shadow_checkpoints_topic} <= erased


def test_the_answer_says_the_decision_records_stay_without_text_and_the_loop_skips_the_job(
    topics: dict[str, Topic],
) -> None:
    answer = erase_answer(DEFAULTS, "school-42/term-1", NOW_S)
    records: Any = answer["records_kept"]
    (kept,) = records
    topic = topics[DEFAULTS.kafka.decisions_topic]
    # 183 days, as create-topics.sh sets it, and gone within 1.1 x like every other topic.
    assert (
        kept["retention_s"] * 1000
        == topic.ms("retention.ms")
        == DEFAULTS.privacy.decisions_retention_ms
        == 183 * 86_400_000
    )
    assert kept["segment_s"] * 1000 == topic.ms("segment.ms")
    gone_by = datetime.fromisoformat(kept["gone_by"]).timestamp()
    assert kept["retention_s"] < gone_by - NOW_S <= 1.1 * kept["retention_s"]
    assert (
        "no text" in kept["holds"] and "no id_alumno" in kept["holds"] and kept["setting"] == "DECISIONS_RETENTION_MS"
    )
    assert "agreement" in answer["teachers_loop"] and "export-training" in answer["teachers_loop"]  # type: ignore[operator]
    # The setting moves the answer as it moves the script.
    shorter = erase_answer(Settings.defaults(decisions_retention_ms=30 * 86_400_000), "j", NOW_S)
    assert shorter["records_kept"][0]["retention_s"] == 30 * 86_400  # type: ignore[index]


def test_the_decisions_retention_is_settable_in_the_script(tmp_path: Path) -> None:
    done, created = run_script(tmp_path / "longer", DECISIONS_RETENTION_MS=str(365 * 86_400_000))
    assert done.returncode == 0, done.stderr
    decisions = created[DEFAULTS.kafka.decisions_topic]
    assert decisions.ms("retention.ms") == 365 * 86_400_000 and decisions.partitions == 12
    assert decisions.ms("retention.ms") + decisions.ms("segment.ms") + RETENTION_CHECK_S * 1000 <= 1.1 * (
        365 * 86_400_000
    )
    done, created = run_script(tmp_path / "short", DECISIONS_RETENTION_MS="60000")
    assert done.returncode != 0 and "too short" in done.stderr and created == {}


def test_the_answer_says_until_when_in_utc_and_follows_the_topic_names() -> None:
    settings = Settings.defaults(results_topic="school.results")
    answer = erase_answer(settings, "plain", NOW_S)
    kept = {p["place"]: p for p in answer["kept_until_retention"]}  # type: ignore[attr-defined]
    results = kept["school.results"]
    assert results["retention_s"] == 14 * 86400
    # 14 days + 33.6 h (segment) + 5 min: 2027-01-30T17:36:00Z.
    assert results["gone_by"] == "2027-01-30T17:36:00Z"
    assert datetime.fromisoformat(results["gone_by"]).timestamp() == pytest.approx(NOW_S + 14 * 86400 + 120_660 + 300)
    assert answer["status"] == "erase_requested" and answer["job_id"] == "plain"


def test_the_control_topic_keeps_erase_commands_as_long_as_progress_keeps_events(topics: dict[str, Topic]) -> None:
    # Gateways learn jobs from the progress topic and erasures from the control topic: a gateway
    # started later must find the erase for as long as it can find the job's events.
    assert topics[DEFAULTS.kafka.control_topic].ms("retention.ms") >= topics[DEFAULTS.kafka.progress_topic].ms(
        "retention.ms"
    )
    assert DEFAULTS.kafka.cancel_ttl_s >= DEFAULTS.gateway.job_ttl_seconds  # and erase marks outlive the replay window


@pytest.mark.parametrize(
    ("job_id", "tenant", "admin", "honour"),
    [
        ("school-a/j", "school-a", False, True),
        ("school-a/j", "school-b", False, False),
        ("school-a/j", None, False, False),  # a 1.1 command names no one: not for a tenant's job
        ("school-a/j", None, True, True),
        ("plain", None, False, True),  # a tenant-less job: anyone who may write the topic
        ("plain", "school-a", False, False),
    ],
)
def test_a_command_is_honoured_for_its_own_tenants_job_or_an_operators(
    job_id: str, tenant: str | None, admin: bool, honour: bool
) -> None:
    assert honoured(erase_command(job_id, tenant=tenant, admin=admin)) is honour
    cancel = ControlCommand(action=ControlAction.CANCEL, job_id=job_id, tenant=tenant, admin=admin)
    assert honoured(cancel) is honour


def test_the_erase_command_is_the_contracts_additive_shape() -> None:
    assert erase_command("school-a/j", tenant="school-a", admin=False).model_dump(mode="json") == {
        "schema_version": 1, "action": "erase", "job_id": "school-a/j", "tenant": "school-a",
    }  # fmt: skip
    assert ControlCommand.model_validate_json(b'{"action": "erase", "job_id": "x", "admin": true}').admin
