"""The sample requests through broker -> consumer -> real vLLM engine -> topics, read back as a client would."""

from __future__ import annotations

import json

import jsonschema
import pytest

from consumer.engine.vllm_engine import VllmEngine
from consumer.metrics import Metrics
from consumer.testing.topics import at_least, read_until, running, values
from consumer.tools.client import read_jobs, submit_and_follow
from tests.helpers import DATA, REPO, SettingsFactory
from tests.kafka_harness import TopicNames

pytestmark = [pytest.mark.engine, pytest.mark.kafka]


def schema(name: str) -> dict[str, object]:
    return json.loads((REPO / "schemas" / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


async def test_sample_requests_end_to_end_with_the_real_engine(
    real_engine: VllmEngine, kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    jobs = read_jobs(DATA / "sample_requests.jsonl", settings.jobs.max_items_per_job)
    assert [len(j.items) for j in jobs] == [10, 6, 4]
    metrics = Metrics()
    async with running(settings, real_engine, metrics):
        followed = await submit_and_follow(settings, jobs, timeout_s=600)
        raw_results = values(await read_until(kafka_bootstrap, topic_names.results, at_least(20)))
        raw_progress = values(await read_until(kafka_bootstrap, topic_names.progress, at_least(1)))

    result_schema, progress_schema = schema("evaluation-result.schema.json"), schema("progress-event.schema.json")
    assert len(raw_results) == 20
    for raw in raw_results:
        jsonschema.validate(raw, result_schema)
        assert raw["model"] == real_engine.model_name and raw["sampling"]["seed"] == 0
        assert (raw["status"] == "ok") == (raw["nota"] is not None)
    for event in raw_progress:
        jsonschema.validate(event, progress_schema)
    for job in jobs:
        assert job.job_id is not None
        progress = followed[job.job_id]
        assert progress.done and len(progress.results) == len(job.items)
        assert progress.complete is not None
        assert progress.complete.succeeded + progress.complete.failed == len(job.items)
        ids = {r.item_index: r.id_alumno for r in progress.results.values()}
        assert ids == {i: item.id_alumno for i, item in enumerate(job.items)}
    assert (metrics.registry.get_sample_value("texteval_generated_tokens_total") or 0) > 0
    # The instruction is the same for every text: vLLM's prefix cache serves it.
    prompt = metrics.registry.get_sample_value("texteval_prompt_tokens_total") or 0
    cached = metrics.registry.get_sample_value("texteval_prompt_cached_tokens_total") or 0
    assert cached > 0.3 * prompt, (cached, prompt)
