"""Producing a control command (contract 1.2): the one writer of the control topic.

``texteval cancel``, ``texteval erase`` (through ``consumer.erasure.produce_erase``)
and the gateway's ``DELETE /jobs/{id}`` all send their commands here, so a
command has one shape on the wire: the ``ControlCommand`` as JSON, keyed by its
``job_id`` (every command for a job lands on one partition, in the order sent).
At the ground layer, beside the contract, because the tools and the gateway
both produce commands and the gateway imports neither the pipeline nor the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from consumer.contract import ControlCommand


async def produce_command(producer: AIOKafkaProducer, topic: str, command: ControlCommand) -> None:
    """Send ``command`` to ``topic`` (``KAFKA_CONTROL_TOPIC``); returns once the broker acknowledged it."""
    await producer.send_and_wait(topic, value=command.model_dump_json().encode(), key=command.job_id.encode())
