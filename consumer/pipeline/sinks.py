"""Where graded work goes: results, progress events and dead letters.

One producer serves all three topics (connections and batching are shared).
Every send returns the broker acknowledgement as a future instead of
waiting for it: a job awaits all of its acknowledgements once, at the end,
before its offset may be committed. Everything is keyed by ``job_id`` so a
job's messages stay in one partition, in order.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from consumer.pipeline.intake import Rejection

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer
    from aiokafka.structs import ConsumerRecord

    from consumer.contract import AcceptedEvent, BatchCompleteEvent, CompleteEvent, EvaluationResult

Ack = asyncio.Future[Any]


class Sinks:
    def __init__(
        self, producer: AIOKafkaProducer, *, results_topic: str, progress_topic: str, dlt_topic: str, group_id: str
    ) -> None:
        self._producer = producer
        self._results_topic = results_topic
        self._progress_topic = progress_topic
        self._dlt_topic = dlt_topic
        self._group_id = group_id.encode()

    async def result(self, result: EvaluationResult) -> Ack:
        return await self._send(self._results_topic, result.job_id, result)

    async def progress(self, event: AcceptedEvent | BatchCompleteEvent | CompleteEvent) -> Ack:
        return await self._send(self._progress_topic, event.job_id, event)

    async def dead_letter(
        self, record: ConsumerRecord[bytes, bytes], rejection: Rejection, *, keep_value: bool = True
    ) -> Ack:
        """The original key, value and headers unchanged, plus why and where from.

        ``keep_value=False`` is for a value too big to produce again (a fetch
        returns a record larger than our own limit whole, KIP-74): the dead
        letter then says so, and the value stays in the source topic at
        ``texteval.original.offset``.
        """
        headers = [
            *(record.headers or ()),
            ("texteval.error.reason", rejection.reason.value.encode()),
            ("texteval.error.detail", rejection.detail.encode()),
            ("texteval.original.topic", record.topic.encode()),
            ("texteval.original.partition", str(record.partition).encode()),
            ("texteval.original.offset", str(record.offset).encode()),
            ("texteval.original.timestamp", str(record.timestamp).encode()),
            ("texteval.consumer.group", self._group_id),
        ]
        if not keep_value:
            headers.append(("texteval.error.value_dropped", str(len(record.value or b"")).encode()))
        value = record.value if keep_value else None
        ack: Ack = await self._producer.send(self._dlt_topic, value=value, key=record.key, headers=headers)
        return ack

    async def _send(self, topic: str, job_id: str, message: BaseModel) -> Ack:
        ack: Ack = await self._producer.send(topic, value=message.model_dump_json().encode(), key=job_id.encode())
        return ack

    async def flush(self) -> None:
        await self._producer.flush()
