"""Erased jobs leave the teachers' loop (contract 1.3), against the real broker: after
`texteval erase`, `agreement` and `export-training` skip the job (found by its erased decision
record, or by an erase command alone) and say how many jobs and items they skipped; a foreign
erase command skips nothing; a correction a producer wrote with a future corrected_at is ignored."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from consumer.testing.processes import service_env
from consumer.testing.topics import create_topics, make_settings, produce
from tests.kafka_harness import TopicNames
from tests.tools.test_correct_kafka import texteval

pytestmark = [pytest.mark.kafka, pytest.mark.process]

DATA = Path(__file__).resolve().parent.parent / "data"
JOB_A, JOB_B, JOB_C = (f"school-1/term-1/{name}" for name in "abc")


def lines(name: str) -> list[bytes]:
    return (DATA / f"agreement_{name}.jsonl").read_bytes().splitlines()


async def test_agreement_and_export_skip_erased_jobs_and_say_how_many(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames, tmp_path: Path
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    settings = make_settings(
        kafka_bootstrap, topic_names, kafka_group_kwargs,
        KAFKA_CORRECTIONS_TOPIC=f"{prefix}.evaluation.corrections",
        KAFKA_DECISIONS_TOPIC=f"{prefix}.evaluation.decisions",
    )  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    for name, topic in (("results", settings.kafka.results_topic), ("requests", settings.kafka.requests_topic),
                        ("corrections", settings.kafka.corrections_topic)):  # fmt: skip
        await produce(kafka_bootstrap, topic, [(json.loads(line)["job_id"].encode(), line) for line in lines(name)])
    # Written straight to the topic, bypassing `texteval correct` and the gateway: dated in the future.
    future = {"job_id": JOB_B, "item_index": 0, "nota": 0, "corrected_at": "2999-01-01T00:00:00Z"}
    # Job c erased by a command alone (its record lost); job b's erase comes from another tenant: ignored.
    commands = [
        (JOB_C, {"schema_version": 1, "action": "erase", "job_id": JOB_C, "admin": True}),
        (JOB_B, {"schema_version": 1, "action": "erase", "job_id": JOB_B, "tenant": "school-2"}),
    ]
    await produce(kafka_bootstrap, settings.kafka.corrections_topic, [(JOB_B.encode(), json.dumps(future).encode())])
    await produce(
        kafka_bootstrap, settings.kafka.control_topic, [(k.encode(), json.dumps(v).encode()) for k, v in commands]
    )
    env = service_env(settings)

    code, before, err = await texteval(env, "agreement", "--json")
    assert code == 0, err
    assert json.loads(before)["erased_skipped"] == {"checked": True, "jobs": 1, "items": 1}  # job c only so far
    code, out, err = await texteval(env, "erase", JOB_A, "--tenant", "school-1")
    assert code == 0, err

    code, out, err = await texteval(env, "agreement", "--json")
    assert code == 0, err
    report = json.loads(out)
    # Job a: 20 corrected items (one corrected twice), job c: 1; job b's 18 are counted, its future one is not.
    assert report["erased_skipped"] == {"checked": True, "jobs": 2, "items": 21}
    assert report["corrections"] == 18 and report["without_result"] == 0
    assert "1 corrections dated in the future when written ignored" in err
    code, text, err = await texteval(env, "agreement")
    assert code == 0 and "erased jobs skipped: 2 (21 corrected items)" in text, text + err

    out_file = tmp_path / "train.jsonl"
    code, out, err = await texteval(env, "export-training", "--out", str(out_file))
    assert code == 0, err
    exported = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    assert exported and {line["job_id"] for line in exported} == {JOB_B}
    assert "erased jobs skipped: 2 (21 corrected items)" in out

    # Not checking is possible, and said: then the erased jobs are back.
    code, out, err = await texteval(env, "agreement", "--json", "--erased", "none")
    assert code == 0 and "erased jobs not checked (--erased none)" in err
    unchecked = json.loads(out)
    assert unchecked["erased_skipped"] == {"checked": False, "jobs": 0, "items": 0}
    assert unchecked["corrections"] == 18 + 21
