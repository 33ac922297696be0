"""The Kafka test harness works against a real broker (embedded Tansu here)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from consumer.kafka import client_kwargs, ensure_topics
from consumer.settings import Settings
from consumer.testing.topics import TopicNames, create_topics
from consumer.tools.broker import BrokerError, EmbeddedBroker, probe_kafka

pytestmark = pytest.mark.kafka


async def test_round_trip_with_manual_commit(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    await create_topics(kafka_bootstrap, topic_names)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic_names.requests, b'{"job_id": "j1"}', key=b"j1", headers=[("h", b"v")])
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic_names.requests,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{topic_names.requests}.group",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_group_kwargs,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            record = await consumer.getone()
        assert (record.key, record.value) == (b"j1", b'{"job_id": "j1"}')
        assert list(record.headers) == [("h", b"v")]
        assert (record.partition, record.offset) == (sent.partition, sent.offset)
        tp = TopicPartition(record.topic, record.partition)
        await consumer.commit({tp: record.offset + 1})
        assert await consumer.committed(tp) == record.offset + 1
    finally:
        await consumer.stop()


async def test_topics_get_requested_partitions(kafka_bootstrap: str, topic_names: TopicNames) -> None:
    await create_topics(kafka_bootstrap, [topic_names.requests], partitions=4)
    await create_topics(kafka_bootstrap, [topic_names.results, topic_names.dlt], partitions=1)
    # Idempotent: nothing left to create, existing topics untouched.
    assert await ensure_topics(kafka_bootstrap, {topic_names.requests: 4, topic_names.dlt: 1}) == []

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic_names.requests, topic_names.results, topic_names.dlt])
    finally:
        await admin.close()
    counts = {t["topic"]: len(t["partitions"]) for t in described}
    assert counts == {topic_names.requests: 4, topic_names.results: 1, topic_names.dlt: 1}


async def test_ensure_topics_rejects_zero_partitions() -> None:
    # Checked before connecting: Tansu would create an unusable topic.
    with pytest.raises(ValueError, match="at least one partition"):
        await ensure_topics("127.0.0.1:1", {"t": 0})


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_embedded_broker_stop_really_stops() -> None:
    broker = EmbeddedBroker()
    with broker:
        assert broker.running and broker.pid is not None
        assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
        assert probe_kafka("127.0.0.1", broker.port) == broker.port
        pid, port, log = broker.pid, broker.port, broker.log_path
        assert log is not None and log.exists()
    assert not broker.running
    assert not _port_open(port)
    # The process is gone (reaped), not just silent.
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
    assert not log.exists()  # a temporary log goes with the broker
    broker.stop()  # idempotent


def test_embedded_broker_reports_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        log = tmp_path / "tansu.log"
        broker = EmbeddedBroker(port=port, log_path=log, startup_timeout=5)
        with pytest.raises(BrokerError, match="AddrInUse"):
            broker.start()
        assert not broker.running
        assert log.exists()


async def test_wait_ready_on_a_running_broker() -> None:
    with EmbeddedBroker() as broker:
        await broker.wait_ready()


def test_client_kwargs_plaintext_and_sasl_ssl() -> None:
    plain = client_kwargs(Settings(_env_file=None, KAFKA_BOOTSTRAP_SERVERS="b:9092"))  # type: ignore[call-arg]
    assert plain == {"bootstrap_servers": "b:9092", "security_protocol": "PLAINTEXT", "ssl_context": None}

    secure = client_kwargs(
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            KAFKA_BOOTSTRAP_SERVERS="b:9093",
            KAFKA_SECURITY_PROTOCOL="sasl_ssl",
            KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
            KAFKA_SASL_USERNAME="u",
            KAFKA_SASL_PASSWORD=SecretStr("p"),
        )
    )
    assert secure["security_protocol"] == "SASL_SSL"
    assert secure["ssl_context"] is not None and secure["ssl_context"].check_hostname
    assert (secure["sasl_mechanism"], secure["sasl_plain_username"], secure["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "u",
        "p",
    )
