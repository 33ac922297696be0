"""``texteval correct FILE``: teachers' corrections to the corrections topic.

Every line (JSONL) or row (CSV: ``job_id, item_index, nota, feedback,
comment, corrected_at``) is validated like a request; a valid one is
produced keyed by ``job_id`` (a job's corrections stay in order in one
partition), an invalid one goes to ``<corrections topic>.DLT`` with the
reason, and the rest of the file still goes out (contract 1.2).

The dead letter follows the request DLT's conventions
(``consumer/pipeline/sinks.py``): the original value unchanged (a CSV row
as the JSON object of its cells), the original key when there is one, and
the headers ``texteval.error.reason`` and ``texteval.error.detail`` (field
paths and what is wrong, never the text). A file has no topic, partition or
offset: its coordinates are ``texteval.original.file`` and
``texteval.original.line``. ``DeadLetters`` itself cannot be reused: it
copies a consumed Kafka record, and a file line is not one.

Contract 1.3: a line whose ``corrected_at`` lies more than a minute in the
future is dead-lettered like any invalid line (``invalid_correction``,
detail ``corrected_at: lies more than a minute in the future``), and every
correction produced also gets its decision record on the decisions topic
(``by: "cli"``; ``previous_nota`` null: the command line holds no grades).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from consumer.contract import JOB_ID_PATTERN, utc_now
from consumer.corrections import Correction, InvalidCorrection, correction_record, parse_correction
from consumer.kafka import client_kwargs, ensure_topics
from consumer.settings import Settings
from consumer.tools.loop_sources import correction_records

REASON_HEADER = "texteval.error.reason"
DETAIL_HEADER = "texteval.error.detail"
FILE_HEADER = "texteval.original.file"
LINE_HEADER = "texteval.original.line"
BY_CLI = "cli"  # a correction record's `by` for texteval correct


class CorrectionRejectReason(StrEnum):
    INVALID_JSON = "invalid_json"  # the line is not JSON
    INVALID_CORRECTION = "invalid_correction"  # JSON, but breaks the contract


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    key: bytes | None
    value: bytes
    reason: CorrectionRejectReason
    detail: str  # field paths and what is wrong: safe to print and to put in a header


@dataclass
class CorrectionBatch:
    """A file read: what goes to the topic and what goes to the DLT, in file order."""

    valid: list[Correction] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def _key_of(data: Any) -> bytes | None:
    # The original key: the job the line names, when it names one that could be a key.
    job_id = data.get("job_id") if isinstance(data, dict) else None
    return job_id.encode() if isinstance(job_id, str) and re.fullmatch(JOB_ID_PATTERN, job_id) else None


def read_correction_file(path: Path, max_items: int) -> CorrectionBatch:
    """Validate every line; raises ``InputFileError`` only when the file itself cannot be read."""
    batch = CorrectionBatch()
    now = utc_now()  # one time for the file: a teacher's sheet is one act of correcting
    for number, raw, data in correction_records(path):
        if data is None:
            batch.rejected.append(
                Rejected(number, None, raw, CorrectionRejectReason.INVALID_JSON, "the line is not JSON")
            )
            continue
        try:
            batch.valid.append(parse_correction(data, now=now, max_items=max_items))
        except InvalidCorrection as exc:
            batch.rejected.append(
                Rejected(number, _key_of(data), raw, CorrectionRejectReason.INVALID_CORRECTION, exc.problems)
            )
    return batch


async def produce_corrections(settings: Settings, batch: CorrectionBatch, source_name: str) -> None:
    """The valid ones to the corrections topic, each followed by its decision record,
    the rejected ones to its DLT; waits for every ack."""
    from aiokafka import AIOKafkaProducer

    if settings.kafka.create_topics:
        topics = [
            settings.kafka.corrections_topic,
            settings.kafka.corrections_dlt_topic,
            settings.kafka.decisions_topic,
        ]
        await ensure_topics(
            settings.kafka.bootstrap_servers,
            dict.fromkeys(topics, settings.kafka.topic_partitions),
            **client_kwargs(settings),
        )
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", enable_idempotence=False)
    await producer.start()
    try:
        acks = []
        for c in batch.valid:
            key = c.job_id.encode()
            record = correction_record(c, previous_nota=None, by=BY_CLI)
            acks.append(
                await producer.send(settings.kafka.corrections_topic, value=c.model_dump_json().encode(), key=key)
            )
            acks.append(
                await producer.send(settings.kafka.decisions_topic, value=record.model_dump_json().encode(), key=key)
            )
        for rejected in batch.rejected:
            headers = [
                (REASON_HEADER, rejected.reason.value.encode()),
                (DETAIL_HEADER, rejected.detail.encode()),
                (FILE_HEADER, source_name.encode()),
                (LINE_HEADER, str(rejected.line).encode()),
            ]
            acks.append(
                await producer.send(
                    settings.kafka.corrections_dlt_topic, value=rejected.value, key=rejected.key, headers=headers
                )
            )
        for ack in acks:
            await ack
    finally:
        await producer.stop()
