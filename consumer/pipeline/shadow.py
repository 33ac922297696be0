"""Shadow grading: a candidate model grades beside the live one, and nobody sees its grades but the release check.

A shadow is an ordinary consumer process with ``SHADOW=true`` and its own
``KAFKA_GROUP_ID``: as a second consumer group it reads every request the
live group reads, at its own pace (it never holds the live consumers back,
and on another process or GPU costs them nothing). Two things differ, both
here, so the data path stays the live one:

- in the job's plan (``jobstate.plan``, the ledger's ``sample_rate``), the
  items outside ``SHADOW_SAMPLE_RATE`` (``sampled``) are done before the run
  starts, so the run grades only the sample. The sample is a hash of
  ``job_id`` and ``id_alumno`` (not a random draw): every run and every
  shadow takes the same items, and the live grade of each is on the results
  topic to compare with;
- at the sinks, ``ShadowSinks``: results go to ``KAFKA_SHADOW_RESULTS_TOPIC``
  (same contract, plus the Kafka header ``texteval.shadow: 1``); progress
  events and dead letters are not written (the live group writes them: a
  gateway or a teacher must never see a shadow's), and decision records are
  off (``Settings.as_shadow``): a shadow's grade is released to no one.

Its cost is counted (``texteval_shadow_items``, ``texteval_shadow_engine_seconds``).
"""

from __future__ import annotations

import asyncio
import hashlib
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from consumer.pipeline.sinks import Ack, DeadLetterForm, Sinks

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer
    from aiokafka.structs import ConsumerRecord

    from consumer.contract import AcceptedEvent, BatchCompleteEvent, CancelledEvent, CompleteEvent, EvaluationResult
    from consumer.metrics import Metrics
    from consumer.pipeline.intake import Rejection

SHADOW_HEADER = ("texteval.shadow", b"1")
_SCALE = 2**64


class Sampled(StrEnum):
    """The `sampled` label of texteval_shadow_items: whether SHADOW_SAMPLE_RATE took the item."""

    YES = "true"
    NO = "false"


def sampled(job_id: str, id_alumno: str, rate: float) -> bool:
    """Whether the item is in the shadow's sample: the first 8 bytes of SHA-256 below ``rate``."""
    if rate >= 1.0:
        return True
    digest = hashlib.sha256(f"{job_id}\x1f{id_alumno}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < rate * _SCALE


def _done() -> Ack:
    ack: Ack = asyncio.get_running_loop().create_future()
    ack.set_result(None)
    return ack


class ShadowSinks(Sinks):
    """Results to the shadow topic, marked; nothing else leaves a shadow."""

    def __init__(self, producer: AIOKafkaProducer, *, metrics: Metrics, **topics: Any) -> None:
        super().__init__(producer, **topics)
        self._metrics = metrics

    async def result(self, result: EvaluationResult) -> Ack:
        self._metrics.shadow_items.labels(model=result.model, sampled=Sampled.YES).inc()
        self._metrics.shadow_engine_seconds.labels(model=result.model).inc(result.latency_ms / 1000.0)
        return await self._produce(
            self._results_topic,
            value=result.model_dump_json().encode(),
            key=result.job_id.encode(),
            headers=[SHADOW_HEADER],
        )

    async def progress(self, event: AcceptedEvent | BatchCompleteEvent | CompleteEvent | CancelledEvent) -> Ack:
        return _done()

    async def dead_letter(
        self, record: ConsumerRecord[bytes, bytes], rejection: Rejection, *, form: DeadLetterForm = DeadLetterForm.WHOLE
    ) -> Ack:
        return _done()
