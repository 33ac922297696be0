"""``texteval erase`` through the real command line against the real broker: it says on
whose behalf it speaks (a tenant's job needs --tenant or --admin; the wrong tenant is
refused before anything is produced), produces the erase command, and prints what is
erased now and until when each topic may still hold the job's data."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from consumer.testing.topics import create_topics, read_all, read_until
from tests.conftest import REPO
from tests.kafka_harness import TopicNames

pytestmark = pytest.mark.process


async def test_texteval_erase_produces_the_command_and_prints_what_stays_until_when(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    await create_topics(kafka_bootstrap, [topic_names.control])
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_CONTROL_TOPIC": topic_names.control,
           "KAFKA_RESULTS_TOPIC": "school.results"}  # fmt: skip

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
