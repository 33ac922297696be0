"""Pytest plugin: fixtures for tests that need a real Kafka-compatible broker.

Registered for the whole suite by `pytest_plugins` in tests/conftest.py; a
test names the fixtures it needs (its `kafka` tier follows from them,
tests/tiers.py).

`kafka_bootstrap` (from `kafka_target`) picks, in order:
1. `KAFKA_BOOTSTRAP_SERVERS` from the environment (an external broker);
2. a testcontainers Kafka, when a Docker engine answers;
3. the embedded Tansu broker (consumer.tools.broker), on a free loopback port.

Consumers should add `**kafka_group_kwargs` (fast group joins on Tansu).
Every test gets its own topic names (`topic_names`), so tests share one
broker per session without seeing each other's messages.

PYTEST_DONT_REWRITE: this module has no asserts; the marker lets it be both
imported (test modules take `TopicNames` from here) and named in
`pytest_plugins` without pytest's "already imported" warning (an error under
`filterwarnings = error`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest

from consumer.testing.topics import TopicNames
from consumer.tools.broker import EmbeddedBroker

__all__ = [
    "KafkaTarget",
    "TopicNames",
    "docker_available",
    "kafka_bootstrap",
    "kafka_group_kwargs",
    "kafka_target",
    "topic_names",
]


def docker_available() -> bool:
    """True when a Docker engine answers a ping. Fails fast (no socket: ~1 ms)."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    # Any failure (no SDK, no socket, refused, a warning turned error) means
    # "no Docker": fall through to the embedded broker.
    except Exception:  # noqa: BLE001
        return False


@dataclass(frozen=True)
class KafkaTarget:
    bootstrap: str
    kind: Literal["external", "testcontainers", "embedded"]


@pytest.fixture(scope="session")
def kafka_target() -> Iterator[KafkaTarget]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield KafkaTarget(external, "external")
        return
    if docker_available():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers before the community split
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield KafkaTarget(container.get_bootstrap_server(), "testcontainers")
        return
    with EmbeddedBroker() as broker:
        yield KafkaTarget(broker.bootstrap_servers, "embedded")


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_target: KafkaTarget) -> str:
    return kafka_target.bootstrap


@pytest.fixture(scope="session")
def kafka_group_kwargs(kafka_target: KafkaTarget) -> dict[str, int]:
    """Consumer-group timings that keep tests fast on the chosen broker.

    Tansu answers a JoinGroup only after about half the member's session
    timeout: 5 s per join with aiokafka's 10 s default, 1 s with 2 s. Apache
    Kafka refuses sessions under group.min.session.timeout.ms (6 s by
    default), so other brokers keep aiokafka's defaults.
    """
    if kafka_target.kind == "embedded":
        return {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}
    return {}


@pytest.fixture
def topic_names() -> TopicNames:
    return TopicNames.unique()
