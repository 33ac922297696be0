"""A job run whose output cannot be delivered: its retry sends the grades again, it does not grade again."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from consumer.contract import Item
from consumer.engine.fake import FakeEngine
from consumer.metrics import Metrics
from consumer.pipeline.intake import Job
from consumer.pipeline.jobs import JobRun
from consumer.pipeline.jobstate import JobState, Progress
from consumer.pipeline.scheduler import Scheduler
from consumer.pipeline.sinks import DeliveryFailed, Sinks
from consumer.testing.topics import items, wait_for


class FlakyProducer:
    """Acknowledges sends at once, except that while ``failing`` every result send fails
    (what aiokafka does when the broker stays unreachable past its request timeout)."""

    def __init__(self) -> None:
        self.failing = False
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, **kw: Any) -> Any:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failing and topic == "r":
            future.set_exception(KafkaTimeoutError())
        else:
            self.sent.append(json.loads(value or b"null"))
            future.set_result(None)
        return future


def job_run(n: int, engine: FakeEngine, producer: FlakyProducer, metrics: Metrics, **kw: Any) -> JobRun:
    sinks = Sinks(producer, results_topic="r", progress_topic="p", dlt_topic="d", group_id="g", decisions_topic="x")  # type: ignore[arg-type]
    job = Job("j", tuple(Item.model_validate(item) for item in items(n)))
    return JobRun(
        job, engine=engine, sinks=sinks, metrics=metrics, scheduler=Scheduler(engine, metrics, depth=8),
        batch_size=10, flush_s=0.05, **kw,
    )  # fmt: skip


async def test_a_failed_delivery_is_retried_with_the_computed_grades_not_graded_again() -> None:
    engine, producer, metrics = FakeEngine(delay_s=0.001, max_concurrency=8), FlakyProducer(), Metrics()
    first = job_run(40, engine, producer, metrics)
    producer.failing = True
    with pytest.raises(DeliveryFailed):
        await first.run()
    assert engine.calls == 40 and not first.progress.done
    assert set(first.unacked) == set(range(40))  # graded, never acknowledged

    producer.failing = False
    retry = job_run(40, engine, producer, metrics, resume=first.progress, carried=first.unacked)
    await retry.run()
    assert engine.calls == 40  # nothing graded twice
    results = [m for m in producer.sent if "result_id" in m]
    assert sorted(r["item_index"] for r in results) == list(range(40))
    # Grades are the first run's, and the metrics counted each item once.
    assert {r["item_index"]: r["nota"] for r in results} == {i: o.nota for i, o in first.unacked.items()}
    graded = metrics.registry.get_sample_value("texteval_items_graded_total", {"status": "ok", "error_code": ""})
    assert graded == 40
    assert retry.terminal is not None and retry.terminal.data.succeeded == 40 and not retry.unacked


async def test_outcomes_acknowledged_before_the_failure_are_neither_carried_nor_sent_again() -> None:
    engine, producer, metrics = FakeEngine(delay_s=0.02, max_concurrency=2), FlakyProducer(), Metrics()
    first = job_run(30, engine, producer, metrics)
    first_task = asyncio.create_task(first.run())
    await wait_for(lambda: len(first.progress.done) >= 10)
    producer.failing = True
    with pytest.raises(DeliveryFailed):
        await first_task
    acked = first.progress.done  # what the job state keeps of the failed run (the ledger's snapshot)
    assert acked and acked.isdisjoint(first.unacked)
    assert acked | set(first.unacked) == set(range(30))

    producer.failing, producer.sent = False, []
    retry = job_run(30, engine, producer, metrics, resume=first.progress, carried=first.unacked)
    await retry.run()
    assert engine.calls == 30
    assert sorted(m["item_index"] for m in producer.sent if "result_id" in m) == sorted(first.unacked)


async def test_an_aborted_run_sends_the_progress_event_of_the_results_it_sent_so_they_count_as_acknowledged() -> None:
    # batch_size 10: cancelled with results sent whose batch is not full yet.
    engine, producer, metrics = FakeEngine(delay_s=0.01, max_concurrency=4), FlakyProducer(), Metrics()
    run = job_run(200, engine, producer, metrics)
    task = asyncio.create_task(run.run())
    await wait_for(lambda: sum("result_id" in m for m in producer.sent) >= 15)
    task.cancel()  # a revoke
    await asyncio.wait([task])
    await asyncio.sleep(0)  # the acknowledgement callbacks
    sent = {m["item_index"] for m in producer.sent if "result_id" in m}
    assert run.progress.done == sent  # every published result is in the job state: none graded again
    last = [m for m in producer.sent if m.get("event") == "batch_complete"][-1]
    assert last["data"]["progress"]["completed"] == len(sent)


async def test_every_grade_is_counted_by_model_and_nota_with_its_confidence() -> None:
    # The drift alerts (deploy/prometheus/alerts.yml, texteval-grades) read these series.
    engine, producer, metrics = FakeEngine(delay_s=0.001, max_concurrency=8), FlakyProducer(), Metrics()
    run = job_run(30, engine, producer, metrics)
    await run.run()
    results = [m for m in producer.sent if "result_id" in m]
    model = engine.model_name

    def count(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, {"model": model, **labels}) or 0.0

    by_nota = {n: count("texteval_grades_total", nota=str(n)) for n in range(6)}
    assert by_nota == {n: sum(r["nota"] == n for r in results) for n in range(6)}
    assert count("texteval_grades_needs_review_total") == sum(bool(r["needs_review"]) for r in results)
    assert count("texteval_grade_confidence_count") == 30
    assert count("texteval_grade_confidence_sum") == pytest.approx(sum(r["confidence"] for r in results))


async def test_batch_results_carry_the_distribution_and_complete_counts_the_grades_to_review() -> None:
    # Contract 1.2: batch_complete results carry the result's three fields; complete
    # counts needs_review over the whole job, a resumed one included.
    engine, producer, metrics = (
        FakeEngine(delay_s=0.001, max_concurrency=8, review_below=0.9),
        FlakyProducer(),
        Metrics(),
    )
    first = job_run(40, engine, producer, metrics)
    await first.run()
    results = {m["item_index"]: m for m in producer.sent if "result_id" in m}
    flagged = sum(bool(r["needs_review"]) for r in results.values())
    assert 0 < flagged < 40  # the fake's distribution flags some, not all, at 0.9
    summaries = {s["item_index"]: s for m in producer.sent if m.get("event") == "batch_complete"
                 for s in m["data"]["results"]}  # fmt: skip
    for index, result in results.items():
        fields = ("nota_probabilities", "confidence", "needs_review")
        assert {f: summaries[index][f] for f in fields} == {f: result[f] for f in fields}
    complete = next(m for m in producer.sent if m.get("event") == "complete")
    assert complete["data"]["needs_review"] == flagged
    assert first.progress.needs_review == flagged  # what the job state keeps

    # A new owner resumes after 25 acknowledged items: its count covers the whole job.
    done = frozenset(range(25))
    prior = Progress(done, succeeded=25, needs_review=sum(bool(results[i]["needs_review"]) for i in done))
    state = JobState(job_id="j", fingerprint="f", partition=0, offset=0, total_items=40).with_progress(prior)
    producer.sent.clear()
    resumed = job_run(40, engine, producer, metrics, resume=JobState.decode(state.encode()).progress)
    await resumed.run()
    complete = next(m for m in producer.sent if m.get("event") == "complete")
    assert complete["data"]["needs_review"] == flagged


async def test_without_a_distribution_complete_has_no_review_count() -> None:
    engine, producer = FakeEngine(delay_s=0.001, max_concurrency=8, review_below=None), FlakyProducer()
    await job_run(10, engine, producer, Metrics()).run()
    complete = next(m for m in producer.sent if m.get("event") == "complete")
    assert "needs_review" not in complete["data"]
    assert all("confidence" not in m for m in producer.sent if "result_id" in m)
