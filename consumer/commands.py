"""Producing a control command (contract 1.2): the one writer of the control topic.

``texteval cancel``, ``texteval erase`` (through ``consumer.erasure.produce_erase``)
and the gateway's ``DELETE /jobs/{id}`` all send their commands here, so a
command has one shape on the wire: the ``ControlCommand`` as JSON, keyed by its
``job_id`` (every command for a job lands on one partition, in the order sent).
At the ground layer, beside the contract, because the tools and the gateway
both produce commands and the gateway imports neither the pipeline nor the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from consumer.kafka import client_kwargs

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from consumer.contract import ControlCommand
    from consumer.settings import Settings


async def produce_command(producer: AIOKafkaProducer, topic: str, command: ControlCommand) -> None:
    """Send ``command`` to ``topic`` (``KAFKA_CONTROL_TOPIC``); returns once the broker acknowledged it."""
    await producer.send_and_wait(topic, value=command.model_dump_json().encode(), key=command.job_id.encode())


@contextlib.asynccontextmanager
async def control_producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A producer for a command or two (``texteval cancel``, ``texteval erase``), stopped after;
    every replica acknowledges (the gateway keeps its own, long-lived)."""
    from aiokafka import AIOKafkaProducer  # heavy: imported when a command is sent

    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", enable_idempotence=False)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()
