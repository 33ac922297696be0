"""Erasing a job in the consumer's job state: as a unit (a real store whose producer
only records; a fake clock), and one load against the real broker. The record is
deleted, nothing of the job is written again until the erase's TTL ends, a run cut
short cannot write it back, and a record a later load reads back (its last owner
died before the tombstone) is deleted again."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaProducer

from consumer.contract import CancelledEvent, Item
from consumer.kafka import ensure_topics
from consumer.metrics import Metrics
from consumer.pipeline.intake import Job
from consumer.pipeline.jobstate import Action, JobState, JobStateStore, Ledger, Progress, fingerprint
from consumer.testing.topics import items, produce, read_all
from tests.pipeline import doubles
from tests.pipeline.doubles import Clock, Producer, Run

JOB = Job("school/erase-me", tuple(Item.model_validate(i) for i in items(10)))
REQUEST = b"the request's bytes"
TTL_S = 86_400.0


def _ledger() -> tuple[Ledger, JobStateStore, Producer, Clock]:
    ledger, store, producer, clock, _ = doubles.ledger(retention_s=7 * TTL_S)
    return ledger, store, producer, clock


async def test_an_erased_running_job_is_cancelled_its_state_tombstoned_and_never_written_back() -> None:
    ledger, store, producer, clock = _ledger()
    assert ledger.plan(JOB, REQUEST, 2, 7).action is Action.GRADE
    run = Run()
    lease = ledger.started(JOB.job_id, run)
    run.progress = Progress(frozenset({0, 1}), 2, 0, 0.5)
    await ledger.save()
    # The control reader's order for an erase: the cancel, then the erase.
    ledger.cancel(JOB.job_id, clock.now + TTL_S)
    ledger.erase(JOB.job_id, clock.now + TTL_S)
    assert run.cancel_requested and store.get(JOB.job_id) is None
    # The run ends with its `cancelled` event and more acknowledged items: none of it is written.
    run.progress = Progress(frozenset({0, 1, 2}), 3, 0, 0.7)
    run.terminal = CancelledEvent.model_validate(
        {"job_id": JOB.job_id, "data": {"total_items": 10, "completed": 3, "succeeded": 3, "failed": 0,
                                        "total_time_seconds": 0.7}})  # fmt: skip
    ledger.ended(lease)
    await ledger.save()
    assert store.get(JOB.job_id) is None and producer.sent[-1] == (JOB.job_id, None)
    # A re-send within the TTL: `cancelled` (the cancel is in force), and still no record.
    resent = ledger.plan(JOB, REQUEST, 2, 9)
    assert resent.action is Action.CANCELLED and isinstance(resent.event, CancelledEvent)
    assert resent.event.data.completed == 0
    await ledger.save()
    assert store.get(JOB.job_id) is None and producer.sent[-1] == (JOB.job_id, None)


async def test_after_the_erases_ttl_the_id_is_an_ordinary_one_again() -> None:
    ledger, store, _, clock = _ledger()
    ledger.erase(JOB.job_id, clock.now + TTL_S)
    clock.now += TTL_S + 61  # past the TTL, and past the ledger's expiry timer
    await ledger.save()
    assert ledger.plan(JOB, REQUEST, 2, 9).action is Action.GRADE
    assert store.get(JOB.job_id) is not None


async def test_a_record_read_back_by_a_later_load_is_deleted_again(kafka_bootstrap: str) -> None:
    topic = f"state-{time.time_ns()}"
    await ensure_topics(kafka_bootstrap, {topic: 1})
    # The last owner's record, written before it died (no tombstone).
    record = JobState(job_id=JOB.job_id, fingerprint=fingerprint(REQUEST), partition=0, offset=7, total_items=10)
    await produce(kafka_bootstrap, topic, [(JOB.job_id.encode(), record.encode())])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        store = JobStateStore(producer, {"bootstrap_servers": kafka_bootstrap}, Metrics(),
                              topic=topic, retention_s=7 * TTL_S)  # fmt: skip
        store.erase(JOB.job_id, time.time() + TTL_S)  # read before this consumer owned the partition
        await store.load([0])
        await store.flush()
    finally:
        await producer.stop()
    records = await read_all(kafka_bootstrap, topic)
    assert store.get(JOB.job_id) is None
    assert [(r.key, r.value is None) for r in records] == [(JOB.job_id.encode(), False), (JOB.job_id.encode(), True)]
