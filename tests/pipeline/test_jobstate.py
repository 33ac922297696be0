"""Job state: the changelog record, the admission decision, and the store against a real broker."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumer.kafka import ensure_topics
from consumer.metrics import Metrics
from consumer.pipeline.control import ControlReader
from consumer.pipeline.jobstate import Admission, JobPhase, JobState, JobStateStore, decide, fingerprint
from consumer.testing.topics import wait_for


def _state(**overrides: object) -> JobState:
    values: dict[str, object] = {
        "job_id": "school/1", "fingerprint": fingerprint(b"req"), "partition": 2, "offset": 7, "total_items": 2000,
    }  # fmt: skip
    values.update(overrides)
    return JobState(**values)  # type: ignore[arg-type]


def test_a_state_survives_encoding_with_its_bitmap() -> None:
    state = _state(done={0, 1, 7, 1999}, succeeded=3, failed=1, elapsed_s=12.5, terminal=None)
    again = JobState.decode(state.encode())
    assert again == state
    assert len(state.encode()) < 1024  # 2000 items fit a small record (the bitmap is 336 characters)


@pytest.mark.parametrize(
    ("state", "print_", "where", "pending", "expected"),
    [
        (None, "a", (0, 1), True, Admission.NEW),
        (_state(fingerprint="a"), "b", (2, 7), True, Admission.CONFLICT),
        (_state(fingerprint="a", phase=JobPhase.COMPLETED), "b", (2, 9), False, Admission.CONFLICT),
        (_state(fingerprint="a", phase=JobPhase.COMPLETED), "a", (2, 9), False, Admission.REPUBLISH),
        (_state(fingerprint="a", phase=JobPhase.CANCELLED), "a", (2, 9), False, Admission.REPUBLISH),
        (_state(fingerprint="a"), "a", (2, 7), True, Admission.RESUME),  # the same record, read again
        (_state(fingerprint="a"), "a", (2, 9), True, Admission.DUPLICATE),  # a re-send while it runs
        (_state(fingerprint="a"), "a", (2, 9), False, Admission.RESUME),  # a re-send whose original is gone
    ],
)
def test_admission(state: JobState | None, print_: str, where: tuple[int, int], pending: bool,
                   expected: Admission) -> None:  # fmt: skip
    assert decide(state, print_, *where, original_pending=pending) is expected


@pytest.mark.kafka
async def test_the_store_writes_and_a_new_owner_reads_only_its_partitions(kafka_bootstrap: str) -> None:
    topic = f"ckpt-{time.time_ns()}"
    await ensure_topics(kafka_bootstrap, {topic: 3})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()

    def reader() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)

    try:
        first = JobStateStore(producer, reader, topic=topic, retention_s=3600)
        for n in range(6):
            first.put(_state(job_id=f"j{n}", partition=n % 3, done=set(range(n * 10))))
        old = _state(job_id="old", partition=1, phase=JobPhase.COMPLETED)
        first.put(old)
        await first.flush()
        old.updated_at = time.time() - 7200  # finished two hours ago: past a one-hour retention
        await producer.send_and_wait(topic, key=b"old", value=old.encode(), partition=1)

        second = JobStateStore(producer, reader, topic=topic, retention_s=3600)
        assert await second.load([1, 2]) == 4
        assert second.get("j0") is None  # partition 0 is not ours
        assert second.get("j4") is not None and second.get("j4").done == set(range(40))  # type: ignore[union-attr]
        assert second.get("old") is None
        await second.flush()  # writes the expired job's tombstone
        third = JobStateStore(producer, reader, topic=topic, retention_s=10**9)
        await third.load([1])
        assert third.get("old") is None and third.get("j1") is not None
    finally:
        await producer.stop()


@pytest.mark.kafka
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
        control = ControlReader(lambda: AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap), metrics, topic=topic,
                                ttl_s=3600)  # fmt: skip
        task = asyncio.create_task(control.run(seen.append))
        await asyncio.wait_for(control.ready.wait(), 20)
        assert seen == ["a"] and control.is_cancelled("a") and not control.is_cancelled("b")
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
