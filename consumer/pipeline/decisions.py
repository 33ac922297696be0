"""The decision records of the jobs this consumer grades (contract 1.3): one ``grade`` record per released grade.

A record goes out with its result, and an item counts as acknowledged (its
offset may be committed, the job state keeps it) only once both are: a
released grade always has its record. Delivery is at-least-once, so the
record of an item can be written twice:

- a run whose delivery failed publishes its graded outcomes again without
  grading them (``carried``): the record is built from the same outcome,
  ``graded_at`` included, so the second is an exact repeat;
- a job taken over after a crash or a rebalance (its job state says
  ``resume``) regrades the items that were in flight. Before writing any
  record, the run reads the job's partition of the decisions topic from the
  request's time and writes no second record for an item that has one.

What is left: a crash within the first commit interval of a fresh job
(``COMMIT_INTERVAL_MS``, before its job state is first written) makes the
next owner see a fresh job, and an item graded in that interval may get a
second, different record; a reader keeps the last per result_id (docs/privacy.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from consumer.contract import GradeRecord, Item, ItemStatus
from consumer.decisions import answer_hmac, parse_record
from consumer.engine.base import GradeOutcome, GradingEngine
from consumer.engine.confidence import GradeConfidence
from consumer.kafka import Start, TopicReader
from consumer.pipeline.sinks import Ack, Sinks
from consumer.tenants import tenant_of

logger = logging.getLogger(__name__)


def build_grade_record(
    *, job_id: str, item_index: int, item: Item, outcome: GradeOutcome, engine: GradingEngine, key: bytes
) -> GradeRecord:
    """The record of one released grade: no text, no feedback, no id_alumno."""
    if outcome.status is not ItemStatus.OK or outcome.nota is None:
        raise ValueError("only a released grade has a grade record")
    sure = outcome.grade_confidence
    return GradeRecord(
        result_id=f"{job_id}#{item_index}",
        job_id=job_id,
        tenant=tenant_of(job_id),
        item_index=item_index,
        answer_hmac=answer_hmac(key, item.respuesta),
        model=engine.model_name,
        model_revision=engine.model_revision,
        prompt_format=engine.prompt_format,
        prompt_sha256=outcome.prompt_sha256,
        sampling=engine.sampling,
        nota=outcome.nota,
        nota_probabilities=list(raw) if (raw := _raw(sure)) is not None else None,
        confidence=raw[outcome.nota] if raw is not None else None,
        review_reasons=list(outcome.review_reasons or ()),
        graded_at=outcome.graded_at,
        calibration_temperature=sure.temperature if sure is not None else None,
        calibrated_confidence=sure.confidence if sure is not None and sure.temperature is not None else None,
    )


def _raw(sure: GradeConfidence | None) -> tuple[float, ...] | None:
    """The model's own distribution: the record keeps it when the result shows it calibrated."""
    if sure is None:
        return None
    return sure.raw_probabilities if sure.raw_probabilities is not None else sure.probabilities


class DecisionLog:
    """Writes grade records; on a resumed job, first learns which items already have one."""

    def __init__(
        self,
        sinks: Sinks,
        engine: GradingEngine,
        *,
        key: bytes,
        topic: str,
        client: Mapping[str, Any],
        max_message_bytes: int,
        read_timeout_s: float = 30.0,
    ) -> None:
        self._sinks = sinks
        self._engine = engine
        self._key = key
        self._topic = topic
        self._client = dict(client)
        self._max_message_bytes = max_message_bytes
        self._read_timeout_s = read_timeout_s

    async def send(self, job_id: str, item_index: int, item: Item, outcome: GradeOutcome) -> Ack:
        record = build_grade_record(
            job_id=job_id, item_index=item_index, item=item, outcome=outcome, engine=self._engine, key=self._key
        )
        return await self._sinks.decision(record)

    async def recorded(self, job_id: str, since_ms: int | None) -> frozenset[int]:
        """Items of ``job_id`` with a grade record written since ``since_ms`` (the request's time).

        A failure to read is logged and answered with nothing recorded: a
        second record is a smaller harm than a grade held back.
        """
        found: set[int] = set()

        def keep(record: Any) -> None:
            if record.key != job_id.encode():
                return
            parsed = parse_record(record.value)
            if isinstance(parsed, GradeRecord) and parsed.job_id == job_id:
                found.add(parsed.item_index)

        try:
            async with asyncio.timeout(self._read_timeout_s):
                reader = TopicReader(
                    self._client,
                    [self._topic],
                    start=Start.BEGINNING,
                    key=job_id.encode(),
                    since_ms=since_ms,
                    max_message_bytes=self._max_message_bytes,
                    fetch_max_wait_ms=50,
                )
                async with reader:
                    await reader.to_end(keep)
        except Exception as exc:  # noqa: BLE001 - reading back is an optimisation of at-least-once
            logger.warning("decision records of job_id=%s not read back (%s): items regraded may be recorded twice",
                           job_id, type(exc).__name__)  # fmt: skip
            return frozenset()
        return frozenset(found)
