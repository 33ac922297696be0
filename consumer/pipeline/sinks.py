"""Where graded work goes: results, progress events and dead letters.

One producer serves every output topic (connections and batching are shared).
Every send returns the broker acknowledgement as a future instead of
waiting for it: a job awaits all of its acknowledgements once, at the end,
before its offset may be committed. Everything is keyed by ``job_id`` so a
job's messages stay in one partition, in order.

A send that fails, at once or in its acknowledgement, raises
``DeliveryFailed`` (the broker's error is its ``__cause__``): the one failure
of a job run that is worth retrying. Anything else a run raises is a bug.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError
from pydantic import BaseModel

from consumer.pipeline.intake import Rejection

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer
    from aiokafka.structs import ConsumerRecord

    from consumer.contract import (
        AcceptedEvent,
        BatchCompleteEvent,
        CancelledEvent,
        CompleteEvent,
        EvaluationResult,
        GradeRecord,
    )

Ack = asyncio.Future[Any]


class DeliveryFailed(Exception):
    """A message could not be written to an output topic (broker unreachable past the
    producer's retries, or a record the broker refuses)."""

    def __init__(self, topic: str, cause: BaseException) -> None:
        super().__init__(f"send to {topic} failed: {type(cause).__name__}")  # the type only: messages may quote data
        self.topic = topic
        self.__cause__ = cause


class DeadLetterForm(StrEnum):
    """How much of the original record a dead letter carries (see dead_letters.py)."""

    WHOLE = "whole"  # key, value and headers unchanged
    WITHOUT_VALUE = "without_value"  # key and headers; the value's size in a header
    COORDINATES = "coordinates"  # only where it is and why: key "topic:partition:offset", no value or headers


class Sinks:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        results_topic: str,
        progress_topic: str,
        dlt_topic: str,
        group_id: str,
        decisions_topic: str,
    ) -> None:
        self._producer = producer
        self._decisions_topic = decisions_topic
        self._results_topic = results_topic
        self._progress_topic = progress_topic
        self._dlt_topic = dlt_topic
        self._group_id = group_id.encode()

    async def result(self, result: EvaluationResult) -> Ack:
        return await self._send(self._results_topic, result.job_id, result)

    async def decision(self, record: GradeRecord) -> Ack:
        """A decision record (contract 1.3), keyed by job_id like everything else of the job."""
        return await self._send(self._decisions_topic, record.job_id, record)

    async def progress(self, event: AcceptedEvent | BatchCompleteEvent | CompleteEvent | CancelledEvent) -> Ack:
        return await self._send(self._progress_topic, event.job_id, event)

    async def send_progress(self, event: CompleteEvent | CancelledEvent) -> None:
        """One event, sent and acknowledged (a job-state answer: no job runs for it)."""
        await (await self.progress(event))

    async def dead_letter(
        self, record: ConsumerRecord[bytes, bytes], rejection: Rejection, *, form: DeadLetterForm = DeadLetterForm.WHOLE
    ) -> Ack:
        """The original key, value and headers unchanged, plus why and where from.

        Smaller forms are for records that cannot be produced again whole (a
        fetch returns a record larger than our own limit whole, KIP-74; a
        huge key or headers): the original stays in the source topic at
        ``texteval.original.offset``.
        """
        ours = [
            ("texteval.error.reason", rejection.reason.value.encode()),
            ("texteval.error.detail", rejection.detail.encode()),
            ("texteval.original.topic", record.topic.encode()),
            ("texteval.original.partition", str(record.partition).encode()),
            ("texteval.original.offset", str(record.offset).encode()),
            ("texteval.original.timestamp", str(record.timestamp).encode()),
            ("texteval.consumer.group", self._group_id),
        ]
        if form is DeadLetterForm.WHOLE:
            headers, key, value = [*(record.headers or ()), *ours], record.key, record.value
        elif form is DeadLetterForm.WITHOUT_VALUE:
            dropped = ("texteval.error.value_dropped", str(len(record.value or b"")).encode())
            headers, key, value = [*(record.headers or ()), *ours, dropped], record.key, None
        else:
            headers, key, value = [*ours, ("texteval.error.form", form.value.encode())], None, None
        if key is None and value is None:
            # A Kafka record needs a key or a value: name the original by its coordinates.
            key = f"{record.topic}:{record.partition}:{record.offset}".encode()
        return await self._produce(self._dlt_topic, value=value, key=key, headers=headers)

    async def _send(self, topic: str, job_id: str, message: BaseModel) -> Ack:
        return await self._produce(topic, value=message.model_dump_json().encode(), key=job_id.encode())

    async def _produce(self, topic: str, **record: Any) -> Ack:
        try:
            sent: Ack = await self._producer.send(topic, **record)
        except KafkaError as exc:
            raise DeliveryFailed(topic, exc) from exc
        ack: Ack = asyncio.get_running_loop().create_future()

        def relay(done: Ack) -> None:
            if ack.done():
                return
            if done.cancelled():
                ack.cancel()
            elif (exc := done.exception()) is not None:
                ack.set_exception(DeliveryFailed(topic, exc))
            else:
                ack.set_result(done.result())

        sent.add_done_callback(relay)
        return ack

    async def flush(self) -> None:
        await self._producer.flush()
