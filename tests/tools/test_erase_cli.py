"""``texteval erase`` through the real command line against the real broker: it says on
whose behalf it speaks (a tenant's job needs --tenant or --admin; the wrong tenant is
refused before anything is produced), produces the erase command, and prints what is
erased now and until when each topic may still hold the job's data; it also writes the
job's erased decision record, and says that the records stay and the teachers' loop skips the job."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from consumer.testing.topics import create_topics, read_all, read_until
from tests.helpers import REPO
from tests.kafka_harness import TopicNames

pytestmark = pytest.mark.process


async def test_texteval_erase_produces_the_command_and_prints_what_stays_until_when(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    decisions = f"{topic_names.control}.decisions"
    await create_topics(kafka_bootstrap, [topic_names.control, decisions])
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_CONTROL_TOPIC": topic_names.control,
           "KAFKA_RESULTS_TOPIC": "school.results", "KAFKA_DECISIONS_TOPIC": decisions}  # fmt: skip

    async def erase(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "consumer.tools.cli", "erase", *args],
                                       env=env, cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip

    nobody = await erase("school-a/term-1")
    wrong = await erase("school-a/term-1", "--tenant", "school-b")
    bad = await erase("a b")
    before = await read_all(kafka_bootstrap, topic_names.control)
    started = datetime.now(UTC).timestamp()
    owner = await erase("school-a/term-1", "--tenant", "school-a")
    operator = await erase("plain-1", "--admin")
    commands = await read_until(kafka_bootstrap, topic_names.control, lambda rs: len(rs) >= 2)

    for refused in (nobody, wrong):
        assert refused.returncode == 2 and "--tenant school-a or --admin" in refused.stderr, refused.stderr
    assert bad.returncode == 2 and "job_id" in bad.stderr
    assert before == []  # nothing produced for a refused command
    assert owner.returncode == 0 and operator.returncode == 0, owner.stderr + operator.stderr
    assert {r.key: json.loads(r.value or b"") for r in commands} == {  # keyed by job id: any partition order
        b"school-a/term-1": {"schema_version": 1, "action": "erase", "job_id": "school-a/term-1",
                             "tenant": "school-a"},
        b"plain-1": {"schema_version": 1, "action": "erase", "job_id": "plain-1", "admin": True},
    }  # fmt: skip
    answer = json.loads(owner.stdout)
    assert answer["job_id"] == "school-a/term-1" and answer["status"] == "erase_requested"
    kept = {p["place"]: p for p in answer["kept_until_retention"]}
    results = kept["school.results"]  # the topic names come from the settings
    gone_by = datetime.fromisoformat(results["gone_by"]).timestamp()
    # Exactly 1.1 x retention after the command ran (create-topics.sh's rule); + a minute for the run.
    assert results["retention_s"] <= gone_by - started <= 1.1 * results["retention_s"] + 60
    assert "gateway memory" in [p["place"] for p in answer["erased_now"]]
    # Contract 1.3: the decision records stay (no text, no name), an erased record is added,
    # and the teachers' loop skips the job; the answer says so.
    (records,) = answer["records_kept"]
    assert records["place"] == decisions and records["retention_s"] == 183 * 86400 and "no text" in records["holds"]
    assert "export-training skip" in answer["teachers_loop"]
    erased = await read_until(kafka_bootstrap, decisions, lambda rs: len(rs) >= 2)
    assert {r.key: json.loads(r.value or b"")["record"] for r in erased} == {
        b"school-a/term-1": "erased", b"plain-1": "erased"
    }  # fmt: skip
    marks = {json.loads(r.value or b"")["job_id"]: json.loads(r.value or b"") for r in erased}
    assert marks["school-a/term-1"]["tenant"] == "school-a" and marks["plain-1"]["tenant"] is None
    assert started - 60 <= datetime.fromisoformat(marks["plain-1"]["at"]).timestamp() <= started + 120
