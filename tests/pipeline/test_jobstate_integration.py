"""Job state against the real broker: the store and the control reader on
their topics, then whole consumers (fake engine, in-process): resume after an
abort, idempotent job ids, cancel, a failed delivery sent again. The unit's
own tests are in test_jobstate_unit.py; process-level faults in
test_faults_process.py."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

from consumer.contract import JobStatus
from consumer.engine.fake import FakeEngine
from consumer.kafka import ensure_topics
from consumer.metrics import Metrics
from consumer.pipeline.app import ConsumerApp
from consumer.pipeline.control import ControlReader
from consumer.pipeline.jobstate import JobState, JobStateStore, fingerprint
from consumer.pipeline.service import job_state, scheduler_from
from consumer.pipeline.sinks import Sinks
from consumer.testing.topics import (
    at_least,
    committed_to_end,
    count_events,
    create_topics,
    items,
    job,
    make_settings,
    produce,
    read_until,
    running,
    values,
    wait_for,
)
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames

pytestmark = pytest.mark.kafka


async def _send(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    await produce(bootstrap, topic, [(key.encode(), value)])


async def test_a_job_aborted_mid_way_resumes_where_its_acknowledged_items_end(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for(SHUTDOWN_GRACE_S=0)
    request = job("resume-me", items(400))
    await create_topics(kafka_bootstrap, topic_names)
    await _send(kafka_bootstrap, topic_names.requests, "resume-me", request)
    first = FakeEngine(delay_s=0.1, max_concurrency=16)
    # Shut down with no grace: the job is aborted, its offset not committed.
    async with running(settings, first):
        await read_until(kafka_bootstrap, topic_names.results, at_least(100))
    published_first = len(await read_until(kafka_bootstrap, topic_names.results, at_least(100)))
    assert published_first < 400

    second = FakeEngine(delay_s=0.001)
    async with running(settings, second):
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1)))
        results = values(await read_until(kafka_bootstrap, topic_names.results, at_least(400)))
    assert {r["item_index"] for r in results} == set(range(400))  # nothing lost
    duplicates = sum(n - 1 for n in Counter(r["result_id"] for r in results).values())
    accepted = [e for e in progress if e["event"] == "accepted"]
    assert accepted[0]["data"].get("resumed_items") is None
    resumed = accepted[-1]["data"]["resumed_items"]
    assert second.calls == 400 - resumed  # the second owner graded only the rest
    # Graded twice: only what was published but not yet checkpointed at the
    # abort (one commit interval, plus the last batch not yet acknowledged).
    assert resumed >= published_first - 2 * settings.jobs.batch_size - 16, (resumed, published_first)
    assert duplicates == published_first - resumed <= 2 * settings.jobs.batch_size + 16
    complete = progress[-1]["data"]
    assert complete["total_processed"] == 400 and complete["succeeded"] == 400


async def test_an_identical_resend_is_not_graded_and_a_different_one_is_a_conflict(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    engine = FakeEngine(delay_s=0.001)
    metrics = Metrics()
    first, corrected = job("school-7", items(20)), job("school-7", items(15, prefix="B"))
    async with running(settings, engine, metrics):
        await _send(kafka_bootstrap, topic_names.requests, "school-7", first)
        await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1))
        assert engine.calls == 20
        await _send(kafka_bootstrap, topic_names.requests, "school-7", first)  # byte-identical
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 2)))
        await _send(kafka_bootstrap, topic_names.requests, "school-7", corrected)
        dlt = await read_until(kafka_bootstrap, topic_names.dlt, lambda rs: len(rs) >= 1)
        results = values(await read_until(kafka_bootstrap, topic_names.results, at_least(20)))
    assert engine.calls == 20  # the re-send cost no engine call
    completes = [e for e in progress if e["event"] == "complete"]
    assert completes[0] == completes[1]  # the terminal event, published again as it was
    headers = dict(dlt[0].headers)  # type: ignore[attr-defined]
    assert headers["texteval.error.reason"] == b"job_id_conflict"
    assert b"completed" in headers["texteval.error.detail"]
    assert dlt[0].value == corrected  # type: ignore[attr-defined]
    assert all(r["id_alumno"].startswith("A") for r in results) and len(results) == 20  # no mixing
    assert metrics.registry.get_sample_value("texteval_jobs_deduplicated_total", {"admission": "republish"}) == 1


async def test_an_identical_resend_while_the_original_runs_is_skipped_and_committed_after_it(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    engine = FakeEngine(delay_s=0.05, max_concurrency=8)  # 400 items: 2.5 s
    metrics = Metrics()
    request = job("school-8/long", items(400))
    async with running(settings, engine, metrics):
        await _send(kafka_bootstrap, topic_names.requests, "school-8/long", request)
        await read_until(kafka_bootstrap, topic_names.results, at_least(1))  # the original runs
        await _send(kafka_bootstrap, topic_names.requests, "school-8/long", request)  # byte-identical
        await wait_for(
            lambda: (
                metrics.registry.get_sample_value("texteval_jobs_deduplicated_total", {"admission": "duplicate"}) == 1
            )
        )
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1)))
        # The re-send's record is done at once, its offset committed once the original's is.
        assert await committed_to_end(kafka_bootstrap, settings.kafka.group_id, topic_names.requests)
    assert engine.calls == 400  # the re-send cost no engine call
    assert [e["event"] for e in progress].count("accepted") == 1  # and published nothing


async def test_cancel_stops_a_running_job_within_seconds_and_a_cancelled_request_is_never_graded(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    engine = FakeEngine(delay_s=0.05, max_concurrency=8)
    cancel = b'{"schema_version": 1, "action": "cancel", "job_id": "%s"}'
    async with running(settings, engine):
        await _send(kafka_bootstrap, topic_names.requests, "big", job("big", items(2000)))
        await read_until(kafka_bootstrap, topic_names.results, at_least(20))
        sent_at = time.monotonic()
        await _send(kafka_bootstrap, topic_names.control, "big", cancel % b"big")
        progress = values(
            await read_until(kafka_bootstrap, topic_names.progress, lambda rs: any(b"cancelled" in r.value for r in rs))
        )
        took_s = time.monotonic() - sent_at
        calls_at_cancel = engine.calls
        # Cancelled before its request is read: only `cancelled`, completed 0.
        await _send(kafka_bootstrap, topic_names.control, "later", cancel % b"later")
        await asyncio.sleep(0.5)
        await _send(kafka_bootstrap, topic_names.requests, "later", job("later", items(5)))
        more = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("cancelled", 2)))
        await _send(kafka_bootstrap, topic_names.control, "big", cancel % b"big")  # twice: nothing changes
        await asyncio.sleep(0.5)
    assert took_s < 2.0, took_s
    big = next(e for e in progress if e["event"] == "cancelled")["data"]
    assert big["status"] == "cancelled" and big["total_items"] == 2000 and 20 <= big["completed"] < 2000
    assert engine.calls <= calls_at_cancel + 8  # at most what was in flight
    later = [e for e in more if e["job_id"] == "later"]
    assert [e["event"] for e in later] == ["cancelled"] and later[0]["data"]["completed"] == 0
    await wait_for(lambda: True)


class _FailingResults:
    """A real producer whose result sends fail while ``failing`` (as when the
    broker stays unreachable past the producer's request timeout)."""

    def __init__(self, producer: AIOKafkaProducer, results_topic: str) -> None:
        self._producer = producer
        self._results = results_topic
        self.failing = True
        self.failed = 0

    async def send(self, topic: str, **kw: Any) -> Any:
        if self.failing and topic == self._results:
            self.failed += 1
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_exception(KafkaTimeoutError())
            return future
        return await self._producer.send(topic, **kw)

    async def flush(self) -> None:
        await self._producer.flush()


async def test_a_job_whose_results_could_not_be_sent_is_sent_again_not_graded_again(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    settings = make_settings(
        kafka_bootstrap, topic_names, kafka_group_kwargs, DELIVERY_RETRY_BACKOFF_S=0.5, COMMIT_INTERVAL_MS=100
    )
    await create_topics(kafka_bootstrap, topic_names)
    await _send(kafka_bootstrap, topic_names.requests, "undelivered", job("undelivered", items(60)))
    engine, metrics = FakeEngine(delay_s=0.001), Metrics()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=settings.kafka.group_id, enable_auto_commit=False,
        auto_offset_reset="earliest", **kafka_group_kwargs,
    )  # fmt: skip
    await producer.start()
    await consumer.start()
    flaky = _FailingResults(producer, topic_names.results)
    sinks = Sinks(flaky, results_topic=topic_names.results, progress_topic=topic_names.progress,  # type: ignore[arg-type]
                  dlt_topic=topic_names.dlt, group_id=settings.kafka.group_id)  # fmt: skip
    ledger, control = await job_state(settings, consumer, producer, metrics)
    app = ConsumerApp(consumer, sinks, engine, metrics, jobs=settings.jobs, kafka=settings.kafka,
                      scheduler=scheduler_from(settings, engine, metrics), ledger=ledger, control=control)  # fmt: skip
    task = asyncio.create_task(app.run())
    try:
        await wait_for(lambda: flaky.failed >= 60)  # every grade computed, none delivered
        await wait_for(lambda: not app.health_report().ready)
        assert any("output delivery failing" in r for r in app.health_report().reasons)
        # A new job waits while the outputs take no writes: its grades could not be written either.
        await _send(kafka_bootstrap, topic_names.requests, "waiting", job("waiting", items(10)))
        await asyncio.sleep(2)  # several retries of the first job meanwhile
        assert engine.calls == 60
        flaky.failing = False
        results = values(await read_until(kafka_bootstrap, topic_names.results, at_least(70)))
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 2)))
    finally:
        app.stop()
        await asyncio.wait([task], timeout=15)
        await consumer.stop()
        await producer.stop()
    assert sorted(r["item_index"] for r in results if r["job_id"] == "undelivered") == list(range(60))
    assert engine.calls == 70  # the retries sent the grades again; nothing was graded twice
    completes = {e["job_id"]: e["data"]["succeeded"] for e in progress if e["event"] == "complete"}
    assert completes == {"undelivered": 60, "waiting": 10}


def _state(**overrides: Any) -> JobState:
    values: dict[str, Any] = {
        "job_id": "school/1", "fingerprint": fingerprint(b"req"), "partition": 2, "offset": 7, "total_items": 2000,
    }  # fmt: skip
    return JobState(**(values | overrides))


async def test_the_store_writes_and_a_new_owner_reads_only_its_partitions(kafka_bootstrap: str) -> None:
    topic = f"ckpt-{time.time_ns()}"
    await ensure_topics(kafka_bootstrap, {topic: 3})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()

    reader = {"bootstrap_servers": kafka_bootstrap}

    try:
        metrics = Metrics()
        first = JobStateStore(producer, reader, metrics, topic=topic, retention_s=3600)
        for n in range(6):
            first.put(_state(job_id=f"j{n}", partition=n % 3, done=set(range(n * 10))))
        old = _state(job_id="old", partition=1, phase=JobStatus.COMPLETED)
        first.put(old)
        await first.flush()
        old.updated_at = time.time() - 7200  # finished two hours ago: past a one-hour retention
        await producer.send_and_wait(topic, key=b"old", value=old.encode(), partition=1)

        # A newer consumer's record and one that is no record at all: skipped and counted, the load goes on.
        newer = old.encode().replace(b'"schema_version":1', b'"schema_version":2')
        await producer.send_and_wait(topic, key=b"newer", value=newer, partition=2)
        await producer.send_and_wait(topic, key=b"garbage", value=b"{not json", partition=2)

        second = JobStateStore(producer, reader, metrics, topic=topic, retention_s=3600)
        assert await second.load([1, 2]) == 4
        assert second.get("newer") is None and second.get("garbage") is None
        for reason in ("unknown_version", "unreadable"):
            assert metrics.registry.get_sample_value("texteval_job_state_skipped_total", {"reason": reason}) == 1
        assert second.get("j0") is None  # partition 0 is not ours
        assert second.get("j4") is not None and second.get("j4").done == set(range(40))  # type: ignore[union-attr]
        assert second.get("old") is None
        await second.flush()  # writes the expired job's tombstone
        third = JobStateStore(producer, reader, metrics, topic=topic, retention_s=10**9)
        await third.load([1])
        assert third.get("old") is None and third.get("j1") is not None
    finally:
        await producer.stop()


class _Commanded:
    """Records the cancels a control reader hands on."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen
        self.until: dict[str, float] = {}

    def cancel(self, job_id: str, until_s: float) -> None:
        self.seen.append(job_id)
        self.until[job_id] = until_s

    def erase(self, job_id: str, until_s: float) -> None:
        pass


async def test_control_commands_are_read_from_the_past_and_followed(kafka_bootstrap: str) -> None:
    topic = f"control-{time.time_ns()}"
    await ensure_topics(kafka_bootstrap, {topic: 2})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, key=b"a", value=b'{"schema_version": 1, "action": "cancel", "job_id": "a"}')
        await producer.send_and_wait(topic, key=b"x", value=b"not json")
        seen: list[str] = []
        metrics = Metrics()
        commanded = _Commanded(seen)
        control = ControlReader({"bootstrap_servers": kafka_bootstrap}, metrics, commanded, topic=topic,
                                ttl_s=3600)  # fmt: skip
        task = asyncio.create_task(control.run())
        await asyncio.wait_for(control.ready.wait(), 20)
        assert seen == ["a"] and commanded.until["a"] > time.time() + 3500  # in force for the TTL
        for _ in range(2):  # the second is a repeat: no second callback
            await producer.send_and_wait(topic, key=b"b", value=b'{"action": "cancel", "job_id": "b"}')
        await wait_for(lambda: seen == ["a", "b"])
        await asyncio.sleep(0.5)
        assert seen == ["a", "b"]
        assert metrics.registry.get_sample_value("texteval_control_commands_total", {"result": "malformed"}) == 1
        assert metrics.registry.get_sample_value("texteval_control_commands_total", {"result": "repeated"}) == 1
        task.cancel()
    finally:
        await producer.stop()
