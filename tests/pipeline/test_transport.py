"""Requests as real producers send them: codecs, batches, headers, records the
client cannot decode, dead letters that cannot be written whole, output
topics that are missing. Against the real broker, with the fake engine."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from consumer.engine.fake import FakeEngine
from consumer.kafka import ensure_topics
from consumer.metrics import Metrics
from consumer.testing.topics import (
    count_events,
    items,
    job,
    read_until,
    running,
    values,
    wait_for,
)
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames

pytestmark = pytest.mark.kafka


def _headers(records: list[object]) -> list[dict[str, bytes]]:
    return [dict(r.headers) for r in records]  # type: ignore[attr-defined]


async def _send(
    bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]], **producer_kwargs: object
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=32 * 1024 * 1024, **producer_kwargs)
    await producer.start()
    try:
        acks = [await producer.send(topic, key=k, value=v) for k, v in messages]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_every_standard_codec_is_graded_and_our_output_is_compressed(
    codec: str, kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for(KAFKA_COMPRESSION_TYPE=codec)
    async with running(settings, FakeEngine(delay_s=0.001)):
        # One producer batch holding three jobs, compressed together.
        jobs = [(f"{codec}-{n}".encode(), job(f"{codec}-{n}", items(5))) for n in range(3)]
        await _send(kafka_bootstrap, topic_names.requests, jobs, compression_type=codec, linger_ms=50)
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 3)))
    done = {e["job_id"]: e["data"] for e in progress if e["event"] == "complete"}
    assert set(done) == {f"{codec}-{n}" for n in range(3)}
    assert all(d["succeeded"] == 5 for d in done.values())


async def test_binary_headers_pass_through_grading_and_dead_letters(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    binary = bytes(range(256))
    async with running(settings, FakeEngine(delay_s=0.001)):
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            hdrs = [("trace", binary), ("empty", b""), ("utf8-🙂", b"valor")]
            await producer.send_and_wait(topic_names.requests, key=b"bad", value=b"{not json", headers=hdrs)
            await producer.send_and_wait(topic_names.requests, key=b"ok", value=job("ok", items(3)), headers=hdrs)
        finally:
            await producer.stop()
        await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1))
        dlt = await read_until(kafka_bootstrap, topic_names.dlt, lambda rs: len(rs) >= 1)
    headers = _headers(dlt)[0]
    assert headers["trace"] == binary and headers["empty"] == b"" and headers["utf8-🙂"] == b"valor"
    assert headers["texteval.error.reason"] == b"invalid_json"


def _corrupt_batch(value: bytes) -> bytes:
    """A record batch whose CRC is wrong: every client refuses to decode it."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    builder.append(0, timestamp=None, key=b"corrupt", value=value, headers=[])
    batch = bytearray(builder.build())
    struct.pack_into(">I", batch, 17, 12345)  # the CRC field of a v2 batch
    return bytes(batch)


async def _produce_raw(bootstrap: str, topic: str, partition: int, batch: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        node = producer.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        if node is None:
            await producer.client.force_metadata_update()
            node = producer.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        response = await producer.client.send(node, ProduceRequest(None, 1, 5000, [(topic, [(partition, batch)])]))
        assert response.topics[0][1][0][1] == 0, f"the broker refused the batch: {response}"
    finally:
        await producer.stop()


async def test_an_undecodable_record_goes_to_the_dlt_by_coordinates_and_nothing_around_it_is_lost(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    # One partition: the corrupt batch sits between valid jobs.
    await ensure_topics(kafka_bootstrap, dict.fromkeys(topic_names, 1))
    settings = settings_for()
    await _send(kafka_bootstrap, topic_names.requests, [(b"before", job("before", items(2)))])
    await _produce_raw(kafka_bootstrap, topic_names.requests, 0, _corrupt_batch(job("hidden", items(2))))
    await _send(kafka_bootstrap, topic_names.requests, [(b"after", job("after", items(2)))])
    metrics = Metrics()
    async with running(settings, FakeEngine(delay_s=0.001), metrics, partitions=1) as app:
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 2)))
        dlt = await read_until(kafka_bootstrap, topic_names.dlt, lambda rs: len(rs) >= 1)
        await wait_for(lambda: app.health_report().ready)
    assert {e["job_id"] for e in progress if e["event"] == "complete"} == {"before", "after"}
    headers = _headers(dlt)[0]
    assert headers["texteval.error.reason"] == b"undecodable_record"
    assert headers["texteval.original.offset"] == b"1" and headers["texteval.original.partition"] == b"0"
    assert b"CorruptRecordException" in headers["texteval.error.detail"]
    assert dlt[0].value is None and dlt[0].key == f"{topic_names.requests}:0:1".encode()  # type: ignore[attr-defined]
    assert metrics.registry.get_sample_value("texteval_fetch_errors_total", {"kind": "undecodable_record"}) == 1


async def test_a_dead_letter_too_large_even_without_its_value_falls_back_to_coordinates(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    # Our producer's limit is 1 MiB here; the request's key alone is 1.5 MiB
    # (the 17 MB key against the 16 MiB default, scaled down).
    settings = settings_for(KAFKA_MAX_MESSAGE_BYTES=1024 * 1024)
    big_key = b"k" * (3 * 1024 * 1024 // 2)
    metrics = Metrics()
    async with running(settings, FakeEngine(delay_s=0.001), metrics):
        await _send(kafka_bootstrap, topic_names.requests, [(big_key, b"{}")])
        await _send(kafka_bootstrap, topic_names.requests, [(b"next", job("next", items(2)))])
        dlt = await read_until(kafka_bootstrap, topic_names.dlt, lambda rs: len(rs) >= 1)
        await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1))
    headers = _headers(dlt)[0]
    assert headers["texteval.error.reason"] == b"invalid_request"
    assert headers["texteval.error.form"] == b"coordinates"
    where = b":".join(headers[f"texteval.original.{k}"] for k in ("topic", "partition", "offset"))
    assert dlt[0].value is None and dlt[0].key == where  # type: ignore[attr-defined]
    assert metrics.registry.get_sample_value("texteval_dead_letters_reduced_total", {"form": "coordinates"}) == 1


async def test_a_missing_output_topic_pauses_grading_and_says_so_until_it_exists(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    settings = settings_for()
    engine = FakeEngine(delay_s=0.001)
    await ensure_topics(kafka_bootstrap, {topic_names.requests: 3, topic_names.progress: 3, topic_names.dlt: 3})
    from consumer.pipeline.service import consumer_running

    async with consumer_running(settings, engine, Metrics()) as app:
        await _send(kafka_bootstrap, topic_names.requests, [(b"j", job("j", items(3)))])
        await wait_for(lambda: any("output topics missing" in r for r in app.health_report().reasons))
        await asyncio.sleep(1.0)
        assert engine.calls == 0  # nothing graded into a topic that does not exist
        await ensure_topics(kafka_bootstrap, {topic_names.results: 3})
        progress = values(await read_until(kafka_bootstrap, topic_names.progress, count_events("complete", 1)))
    assert progress[-1]["data"]["succeeded"] == 3
    assert engine.calls == 3


def test_requests_are_read_committed_by_default() -> None:
    from consumer.settings import Settings

    assert Settings(_env_file=None).kafka.isolation_level == "read_committed"  # type: ignore[call-arg]
    assert json.dumps(Settings(_env_file=None).kafka.compression_type) == '"lz4"'  # type: ignore[call-arg]
