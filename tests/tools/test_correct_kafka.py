"""`texteval correct` against a real broker, and the loop's commands reading the topics."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import pytest

from consumer.testing.processes import service_env
from consumer.testing.topics import at_least, create_topics, make_settings, produce, read_until
from tests.helpers import REPO
from tests.kafka_harness import TopicNames

pytestmark = [pytest.mark.kafka, pytest.mark.process]

DATA = Path(__file__).resolve().parent.parent / "data"
SECRET = "Ho ha escrit la Maria Puig, 2n B"  # stands for a minor's text quoted by a teacher


async def texteval(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumer.tools.cli", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_correct_produces_keyed_corrections_and_dead_letters_a_bad_line_with_its_reason(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames, tmp_path: Path
) -> None:
    corrections_topic = f"t-{uuid.uuid4().hex[:8]}.evaluation.corrections"
    settings = make_settings(
        kafka_bootstrap, topic_names, kafka_group_kwargs, KAFKA_CORRECTIONS_TOPIC=corrections_topic,
        KAFKA_DECISIONS_TOPIC=f"{corrections_topic}.decisions",
    )  # fmt: skip
    await create_topics(
        kafka_bootstrap, [corrections_topic, settings.kafka.corrections_dlt_topic, settings.kafka.decisions_topic]
    )
    good = [
        {"job_id": "school-1/term-1/a", "item_index": 0, "nota": 4, "feedback": "Molt bé.",
         "corrected_at": "2026-12-02T10:00:00Z"},
        {"job_id": "school-2/t/b", "item_index": 7, "nota": 1, "comment": "revisat"},
    ]  # fmt: skip
    bad = {"job_id": "school-1/term-1/a", "item_index": 3, "nota": 9, "feedback": SECRET}
    path = tmp_path / "corrections.jsonl"
    path.write_text("\n".join(json.dumps(v, ensure_ascii=False) for v in [good[0], bad, good[1]]) + "\n")

    code, out, err = await texteval(service_env(settings), "correct", str(path))

    assert code == 1, out + err  # some lines were refused: a script must notice
    assert "2 corrections produced" in out
    assert "line 2: invalid_correction: nota: Input should be less than or equal to 5" in err
    assert SECRET not in out + err
    produced = await read_until(kafka_bootstrap, corrections_topic, at_least(2))
    assert sorted((r.key, json.loads(r.value)["item_index"]) for r in produced if r.value) == [
        (b"school-1/term-1/a", 0), (b"school-2/t/b", 7)
    ]  # fmt: skip
    by_index = {json.loads(r.value)["item_index"]: json.loads(r.value) for r in produced if r.value}
    assert by_index[0]["nota"] == 4 and by_index[0]["corrected_at"] == "2026-12-02T10:00:00Z"
    assert by_index[7]["schema_version"] == 1 and by_index[7]["corrected_at"]  # stamped when produced
    (dead,) = await read_until(kafka_bootstrap, settings.kafka.corrections_dlt_topic, at_least(1))
    headers = {name: value.decode() for name, value in dead.headers}
    assert headers["texteval.error.reason"] == "invalid_correction"
    assert headers["texteval.error.detail"] == "nota: Input should be less than or equal to 5"
    assert (headers["texteval.original.file"], headers["texteval.original.line"]) == ("corrections.jsonl", "2")
    assert dead.key == b"school-1/term-1/a" and dead.value is not None
    assert json.loads(dead.value) == bad  # the original, unchanged (the DLT is where it can be found again)


async def test_agreement_and_export_read_the_topics_as_they_read_files(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames, tmp_path: Path
) -> None:
    corrections_topic = f"t-{uuid.uuid4().hex[:8]}.evaluation.corrections"
    settings = make_settings(
        kafka_bootstrap, topic_names, kafka_group_kwargs, KAFKA_CORRECTIONS_TOPIC=corrections_topic,
        KAFKA_DECISIONS_TOPIC=f"{corrections_topic}.decisions",
    )  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    files = {name: DATA / f"agreement_{name}.jsonl" for name in ("results", "corrections", "requests")}
    for name, topic in (("results", settings.kafka.results_topic), ("requests", settings.kafka.requests_topic)):
        lines = files[name].read_bytes().splitlines()
        await produce(kafka_bootstrap, topic, [(json.loads(line)["job_id"].encode(), line) for line in lines])
    env = service_env(settings)
    code, out, err = await texteval(env, "correct", str(files["corrections"]))
    assert code == 0, out + err

    code, from_topics, err = await texteval(env, "agreement", "--requests", "topic", "--json")
    assert code == 0, err
    file_args = [f"--{name}={path}" for name, path in files.items()]
    code, from_files, err = await texteval(env, "agreement", *file_args, "--json")
    assert code == 0, err
    assert json.loads(from_topics) == json.loads(from_files)
    assert len(json.loads(from_topics)["groups"]) == 2

    out_topics, out_files = tmp_path / "topics.jsonl", tmp_path / "files.jsonl"
    code, _, err = await texteval(env, "export-training", "--out", str(out_topics))
    assert code == 0, err
    code, _, err = await texteval(env, "export-training", *file_args, "--out", str(out_files))
    assert code == 0, err
    assert out_topics.read_bytes() == out_files.read_bytes() and out_files.stat().st_size > 0


async def test_correct_writes_a_decision_record_per_correction_and_dead_letters_a_future_one(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames, tmp_path: Path
) -> None:
    corrections_topic = f"t-{uuid.uuid4().hex[:8]}.evaluation.corrections"
    settings = make_settings(
        kafka_bootstrap, topic_names, kafka_group_kwargs, KAFKA_CORRECTIONS_TOPIC=corrections_topic,
        KAFKA_DECISIONS_TOPIC=f"{corrections_topic}.decisions",
    )  # fmt: skip
    await create_topics(
        kafka_bootstrap, [corrections_topic, settings.kafka.corrections_dlt_topic, settings.kafka.decisions_topic]
    )
    lines = [
        {"job_id": "school-1/t/a", "item_index": 0, "nota": 4, "feedback": SECRET, "comment": SECRET,
         "corrected_at": "2026-12-02T10:00:00Z"},
        {"job_id": "school-1/t/a", "item_index": 1, "nota": 2, "corrected_at": "2999-01-01T00:00:00Z"},
        {"job_id": "school-1/t/a", "item_index": 0, "nota": 5},
    ]  # fmt: skip
    path = tmp_path / "corrections.jsonl"
    path.write_text("".join(json.dumps(v, ensure_ascii=False) + "\n" for v in lines))

    code, out, err = await texteval(service_env(settings), "correct", str(path))

    assert code == 1 and "2 corrections produced" in out, out + err
    assert "line 2: invalid_correction: corrected_at: lies more than a minute in the future" in err
    (dead,) = await read_until(kafka_bootstrap, settings.kafka.corrections_dlt_topic, at_least(1))
    assert dict(dead.headers)["texteval.error.detail"] == b"corrected_at: lies more than a minute in the future"
    records = await read_until(kafka_bootstrap, settings.kafka.decisions_topic, at_least(2))
    assert [r.key for r in records] == [b"school-1/t/a"] * 2  # one partition: in the order applied
    values = [json.loads(r.value) for r in records if r.value]
    assert [(v["record"], v["result_id"], v["nota"], v["previous_nota"], v["by"]) for v in values] == [
        ("correction", "school-1/t/a#0", 4, None, "cli"), ("correction", "school-1/t/a#0", 5, None, "cli")
    ]  # fmt: skip
    assert values[0]["corrected_at"] == "2026-12-02T10:00:00Z" and values[0]["tenant"] == "school-1"
    assert all(v["applied_at"] for v in values)
    assert SECRET not in json.dumps(values)  # no feedback, no comment in a record


async def test_the_correction_applied_last_is_the_one_export_and_agreement_use(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames, tmp_path: Path
) -> None:
    corrections_topic = f"t-{uuid.uuid4().hex[:8]}.evaluation.corrections"
    settings = make_settings(
        kafka_bootstrap, topic_names, kafka_group_kwargs, KAFKA_CORRECTIONS_TOPIC=corrections_topic,
        KAFKA_DECISIONS_TOPIC=f"{corrections_topic}.decisions",
    )  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    job_id = "school-1/term-1/a"
    for name, topic in (("results", settings.kafka.results_topic), ("requests", settings.kafka.requests_topic)):
        lines = [line for line in (DATA / f"agreement_{name}.jsonl").read_bytes().splitlines()
                 if json.loads(line)["job_id"] == job_id]  # fmt: skip
        await produce(kafka_bootstrap, topic, [(job_id.encode(), line) for line in lines])
    # The second line is applied last, though its teacher's clock says earlier: it stands (contract 1.3).
    path = tmp_path / "corrections.jsonl"
    path.write_text(
        json.dumps({"job_id": job_id, "item_index": 0, "nota": 1, "feedback": "Primera lectura.",
                    "corrected_at": "2026-12-02T10:00:00Z"}) + "\n"
        + json.dumps({"job_id": job_id, "item_index": 0, "nota": 2, "feedback": "Segona lectura.",
                      "corrected_at": "2026-12-02T09:00:00Z"}) + "\n"
    )  # fmt: skip
    env = service_env(settings)
    code, out, err = await texteval(env, "correct", str(path))
    assert code == 0, out + err
    out_file = tmp_path / "train.jsonl"
    code, out, err = await texteval(env, "export-training", "--out", str(out_file))
    assert code == 0, err
    (line,) = [json.loads(x) for x in out_file.read_text(encoding="utf-8").splitlines()]
    assert json.loads(line["completion"]) == {"nota": 2, "feedback": "Segona lectura."}
    code, out, err = await texteval(env, "agreement", "--json")
    assert code == 0, err
    (group,) = json.loads(out)["groups"]
    teacher_column = [sum(row[grade] for row in group["confusion_matrix"]) for grade in range(6)]
    assert group["n"] == 1 and teacher_column[2] == 1
