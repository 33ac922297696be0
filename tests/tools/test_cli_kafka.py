"""The operator's commands against a running consumer: submit --follow, then verify."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from consumer.engine.fake import FakeEngine
from consumer.testing.processes import service_env
from consumer.testing.topics import running
from consumer.tools.files import read_results
from tests.helpers import DATA, REPO, SettingsFactory
from tests.kafka_harness import TopicNames

pytestmark = [pytest.mark.kafka, pytest.mark.process]


async def texteval(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumer.tools.cli", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_submit_follow_writes_results_and_verify_agrees(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames, tmp_path: Path
) -> None:
    settings = settings_for()
    env = service_env(settings)
    out, manifest = tmp_path / "results.jsonl", tmp_path / "manifest.jsonl"
    async with running(settings, FakeEngine(delay_s=0.01)):
        code, text = await texteval(
            env, "submit", str(DATA / "sample_items.csv"), "--follow", "--out", str(out), "--manifest", str(manifest)
        )
        assert code == 0, text
        code, report = await texteval(env, "verify", str(manifest), "--wait-s", "10")
    assert code == 0, report
    results = read_results(out)
    assert len(results) == 20 and len({r.result_id for r in results}) == 20
    (line,) = manifest.read_text().splitlines()
    entry = json.loads(line)
    assert entry["total_items"] == 20 and entry["job_id"].startswith("file:sample_items:")
    assert entry["job_id"] in report

    # A manifest naming an item that was never produced: verify must fail.
    manifest.write_text(json.dumps({**entry, "total_items": 21}) + "\n")
    code, report = await texteval(env, "verify", str(manifest))
    assert code == 1, report
