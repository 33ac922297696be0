"""Shadow grading against a real broker (fake engines): a candidate beside the live consumers.

The live group and a shadow group (SHADOW=true, another group id) read the
same requests at once. The shadow grades only its sample (a hash of job_id
and id_alumno), writes its results to the shadow topic with the shadow
header, and nothing else: no progress events, no decision records, no dead
letters; the live group's output is what it is without a shadow. Then
`texteval release-check` reads both topics and compares them on the same items.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from consumer.commands import produce_command
from consumer.engine.fake import FakeEngine
from consumer.erasure import erase_command
from consumer.metrics import Metrics
from consumer.pipeline.shadow import SHADOW_HEADER, sampled
from consumer.settings import Settings
from consumer.testing.topics import at_least, count_events, items, job, produce, read_until, running, values
from consumer.tools.release import Thresholds
from consumer.tools.release_commands import release_check_command
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames

pytestmark = pytest.mark.kafka

CANDIDATE = "texteval/candidate"


class CandidateEngine(FakeEngine):
    """Another model (its own name; the fake's grades)."""

    @property
    def model_name(self) -> str:
        return CANDIDATE


def test_the_sample_is_a_stable_share() -> None:
    chosen = [sampled("job-1", f"A{i:04d}", 0.1) for i in range(5000)]
    assert 0.08 < sum(chosen) / len(chosen) < 0.12
    assert chosen == [sampled("job-1", f"A{i:04d}", 0.1) for i in range(5000)]
    assert all(sampled("j", "x", 1.0) for _ in range(3))
    assert not any(sampled("job-1", f"A{i:04d}", 0.0) for i in range(100))


def test_a_shadow_needs_its_own_group_and_writes_to_its_own_topics() -> None:
    with pytest.raises(ValueError, match="its own KAFKA_GROUP_ID"):
        Settings(_env_file=None, SHADOW=True)  # type: ignore[call-arg]
    shadow = Settings(_env_file=None, SHADOW=True, KAFKA_GROUP_ID="texteval-candidate").as_shadow()  # type: ignore[call-arg]
    assert shadow.kafka.results_topic == "evaluation.results.shadow"
    assert shadow.kafka.checkpoints_topic == "evaluation.checkpoints.shadow"
    assert shadow.privacy.decision_records is False
    assert shadow.kafka.progress_topic == "evaluation.progress"  # read for nothing: a shadow writes no event


async def test_a_shadow_grades_its_sample_beside_the_live_group_and_writes_only_its_results(
    kafka_bootstrap: str,
    settings_for: SettingsFactory,
    topic_names: TopicNames,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shadow_results = f"{topic_names.results}.shadow"
    live_settings = settings_for(DECISIONS_HMAC_KEY="k" * 40)
    shadow_settings = settings_for(
        SHADOW=True, SHADOW_SAMPLE_RATE=0.5, KAFKA_SHADOW_RESULTS_TOPIC=shadow_results,
        KAFKA_SHADOW_CHECKPOINTS_TOPIC=f"{topic_names.checkpoints}.shadow", DECISIONS_HMAC_KEY="k" * 40,
    )  # fmt: skip
    assert shadow_settings.kafka.group_id != live_settings.kafka.group_id
    jobs = {f"school-1/j{n}": items(40, prefix=f"J{n}-") for n in range(3)}
    expected_shadow = {
        f"{job_id}#{i}" for job_id, sent in jobs.items() for i, it in enumerate(sent)
        if sampled(job_id, it["id_alumno"], 0.5)
    }  # fmt: skip
    assert 30 < len(expected_shadow) < 90
    shadow_metrics = Metrics()
    async with (
        running(live_settings, FakeEngine(delay_s=0.005)),
        running(shadow_settings, CandidateEngine(delay_s=0.005), shadow_metrics),
    ):
        messages = [(job_id.encode(), job(job_id, sent)) for job_id, sent in jobs.items()]
        await produce(kafka_bootstrap, topic_names.requests, [*messages, (b"bad", b"not json")])
        live = await read_until(kafka_bootstrap, topic_names.results, at_least(120))
        shadow = await read_until(kafka_bootstrap, shadow_results, at_least(len(expected_shadow)))
        progress = await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 3))
        dead = await read_until(kafka_bootstrap, topic_names.dlt, at_least(1))
        decisions = await read_until(kafka_bootstrap, topic_names.decisions, at_least(120))
        await asyncio.sleep(0.5)  # anything more the shadow would write
        dead_after = await read_until(kafka_bootstrap, topic_names.dlt, at_least(1))
        # An erase reaches the shadow's copy too: it reads the same control topic and
        # tombstones the job's state on its own job-state topic (docs/privacy.md).
        erased = "school-1/j0"
        async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
            await produce_command(producer, topic_names.control, erase_command(erased, tenant=None, admin=True))
        shadow_state = await read_until(
            kafka_bootstrap, shadow_settings.kafka.shadow_checkpoints_topic,
            lambda rs: [r.value for r in rs if r.key == erased.encode()][-1:] == [None],
        )  # fmt: skip
    assert next(r.value for r in shadow_state if r.key == erased.encode()) is not None  # its state, then the tombstone
    shadow_values = values(shadow)
    assert {r["result_id"] for r in shadow_values} == expected_shadow
    assert {r["model"] for r in shadow_values} == {CANDIDATE}
    assert all((SHADOW_HEADER[0], SHADOW_HEADER[1]) in list(r.headers) for r in shadow)
    live_values = values(live)
    assert {r["model"] for r in live_values} == {"texteval/fake-engine"}
    assert len({r["result_id"] for r in live_values}) == 120
    # The shadow's are the live group's only: one complete per job, one dead letter, one record per grade.
    assert sum(json.loads(r.value)["event"] == "complete" for r in progress) == 3
    assert len(dead_after) == len(dead) == 1
    assert {json.loads(r.value)["model"] for r in decisions} == {"texteval/fake-engine"}
    graded = shadow_metrics.registry.get_sample_value(
        "texteval_shadow_items_total", {"model": CANDIDATE, "sampled": "true"}
    )
    skipped = shadow_metrics.registry.get_sample_value(
        "texteval_shadow_items_total", {"model": CANDIDATE, "sampled": "false"}
    )
    assert graded == len(expected_shadow) and skipped == 120 - len(expected_shadow)
    assert (shadow_metrics.registry.get_sample_value("texteval_shadow_engine_seconds_total", {"model": CANDIDATE})
            or 0) > 0  # fmt: skip

    # release-check on the topics: the teachers corrected every item of the three jobs.
    corrections = tmp_path / "corrections.jsonl"
    by_id = {r["result_id"]: r for r in live_values}
    corrections.write_text(
        "".join(json.dumps({"job_id": r["job_id"], "item_index": r["item_index"], "nota": r["nota"]}) + "\n"
                for r in by_id.values())
    )  # fmt: skip
    check = await release_check_command(
        live_settings.with_(shadow_results_topic=shadow_results),
        live="topic", candidate="shadow", corrections=str(corrections), subgroups=None,
        thresholds=Thresholds(min_n=10), erased="none", as_json=True,
    )  # fmt: skip
    assert check == 0  # the same grades as the (corrected) live ones: every criterion passes
    report = json.loads(capsys.readouterr().out)
    assert report["items_compared"] == len(expected_shadow)  # the shadow's sample, live and shadow alike
    assert [m["model"] for m in report["models"]] == ["texteval/fake-engine", CANDIDATE]
