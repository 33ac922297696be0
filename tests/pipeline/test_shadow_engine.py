"""A real shadow run: the CPU stand-in (Gemma 3 270M) live, SmolLM2-135M as the candidate, on the real broker.

Both engines are real vLLM engines in this process, one after the other
(two consumer groups on the same requests: the agreement fixture's two jobs
of the 20 sample items); `texteval release-check` then reads the live results topic, the
shadow topic and the teachers' corrections of those jobs, and compares the
two models on the same items. Neither small model is a grader: the check
must fail, and say why, criterion by criterion.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumer.engine.factory import build_engine
from consumer.metrics import Metrics
from consumer.settings import Settings
from consumer.testing.topics import at_least, create_topics, produce, read_until, running, values
from consumer.tools.release import NOT_ENOUGH, Thresholds
from consumer.tools.release_commands import release_check_command
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames

# Two engines' loads and warm-ups (the grammar compiled twice): past the suite's 900 s on a busy CPU box.
pytestmark = [pytest.mark.engine, pytest.mark.kafka, pytest.mark.timeout(2400)]

DATA = Path(__file__).resolve().parent.parent / "data"
REQUESTS, CORRECTIONS = DATA / "agreement_requests.jsonl", DATA / "agreement_corrections.jsonl"


async def test_stand_in_live_and_smollm2_shadow_compared_by_release_check(
    kafka_bootstrap: str,
    settings_for: SettingsFactory,
    topic_names: TopicNames,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shadow_topic = f"{topic_names.results}.shadow"
    live_settings = settings_for()
    shadow_settings = settings_for(
        SHADOW=True, KAFKA_SHADOW_RESULTS_TOPIC=shadow_topic,
        KAFKA_SHADOW_CHECKPOINTS_TOPIC=f"{topic_names.checkpoints}.shadow",
    )  # fmt: skip
    requests = [line.encode() for line in REQUESTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    await create_topics(kafka_bootstrap, shadow_settings.service_topics())
    await produce(kafka_bootstrap, topic_names.requests, [(json.loads(r)["job_id"].encode(), r) for r in requests])
    # One engine in memory at a time (two vLLM CPU engines and their KV caches did not fit
    # beside other work here): the live group grades, then the shadow group reads the
    # same requests from the beginning, as a shadow started later does.
    live_engine = await build_engine(Settings(_env_file=None))  # type: ignore[call-arg]
    try:
        async with running(live_settings, live_engine):
            live = values(await read_until(kafka_bootstrap, topic_names.results, at_least(40), timeout_s=900))
        live_model = live_engine.model_name
    finally:
        await live_engine.close()
    candidate = await build_engine(Settings(_env_file=None, MODEL_NAME="smollm2"))  # type: ignore[call-arg]
    shadow_metrics = Metrics()
    try:
        async with running(shadow_settings, candidate, shadow_metrics):
            shadow = values(await read_until(kafka_bootstrap, shadow_topic, at_least(40), timeout_s=900))
        candidate_model = candidate.model_name
    finally:
        await candidate.close()
    assert candidate_model != live_model
    assert {r["model"] for r in live} == {live_model}
    assert {r["model"] for r in shadow} == {candidate_model}
    assert {r["result_id"] for r in live} == {r["result_id"] for r in shadow}
    assert shadow_metrics.registry.get_sample_value(
        "texteval_shadow_items_total", {"model": candidate_model, "sampled": "true"}
    ) == len({r["result_id"] for r in shadow})

    settings = live_settings.with_(shadow_results_topic=shadow_topic)
    code = await release_check_command(
        settings, live="topic", candidate="shadow", corrections=str(CORRECTIONS), subgroups=None,
        thresholds=Thresholds(min_n=10), erased="none", as_json=True,
    )  # fmt: skip
    out = capsys.readouterr().out  # vLLM's own log lines go to stdout too: the report is the last thing printed
    report = json.loads(out[out.rindex('{\n  "passed"') :])
    with capsys.disabled():  # the figures, for the notes (pytest -s)
        print("release-check:", json.dumps(report))
    ok_both = sum(
        1
        for r in live
        if r["status"] == "ok" and any(s["result_id"] == r["result_id"] and s["status"] == "ok" for s in shadow)
    )
    assert 0 < report["items_compared"] <= ok_both
    assert [m["role"] for m in report["models"]] == ["live", "candidate"]
    assert all(m["n"] == report["items_compared"] for m in report["models"])
    assert report["models"][1]["agreement_with_live"] is not None
    # Two 100M-parameter stand-ins are no graders: the check fails, on QWK at least.
    assert code == 1 and report["passed"] is False
    qwk = next(c for c in report["models"][1]["criteria"] if c["name"] == "QWK")
    assert qwk["verdict"] == "fail"
    # With the default minimum the honest answer is that there are too few corrections.
    await release_check_command(
        settings, live="topic", candidate="shadow", corrections=str(CORRECTIONS), subgroups=None,
        thresholds=Thresholds(), erased="none",
    )  # fmt: skip
    assert NOT_ENOUGH in capsys.readouterr().out
