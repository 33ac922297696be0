"""The producer's side: submit jobs and follow them to completion.

Used by ``texteval submit`` and ``texteval demo``. Following reads the
progress and results topics from their current end (taken before the jobs
are produced, so nothing is missed) and keeps one result per ``result_id``,
as every reader of an at-least-once stream should.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.contract import EvaluationRequest, EvaluationResult
from consumer.kafka import client_kwargs, topic_partitions
from consumer.settings import Settings
from consumer.tools.files import InputFileError, job_id_for, read_items


def read_jobs(path: Path, max_items: int) -> list[EvaluationRequest]:
    """A JSONL of requests is one job per line; any other file is one job."""
    if path.suffix.lower() == ".jsonl":
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines and all('"items"' in line for line in lines):
            jobs = []
            for number, line in enumerate(lines, start=1):
                try:
                    jobs.append(EvaluationRequest.model_validate_json(line, context={"max_items": max_items}))
                except ValueError as exc:
                    raise InputFileError(f"line {number}: not a valid request ({type(exc).__name__})") from None
            return [job if job.job_id else _with_id(job, path, n) for n, job in enumerate(jobs)]
    items = read_items(path, max_items)
    return [_with_id(EvaluationRequest(items=items), path, 0)]


def _with_id(job: EvaluationRequest, path: Path, number: int) -> EvaluationRequest:
    # A fresh id per submission: re-submitting a file is a new job, not a
    # duplicate of the old one (result_id derives from job_id).
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return job.model_copy(update={"job_id": f"{job_id_for(path)}:{stamp}:{number}"})


@dataclass
class JobProgress:
    total: int
    results: dict[str, EvaluationResult] = field(default_factory=dict)
    complete: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.complete is not None and len(self.results) >= self.total


OnResult = Callable[[EvaluationResult], None]
OnEvent = Callable[[dict[str, Any]], None]


async def submit_and_follow(
    settings: Settings,
    jobs: list[EvaluationRequest],
    *,
    follow: bool,
    on_result: OnResult | None = None,
    on_event: OnEvent | None = None,
    timeout_s: float = 3600.0,
) -> dict[str, JobProgress]:
    kafka = client_kwargs(settings)
    reader = None
    if follow:
        reader = AIOKafkaConsumer(
            **kafka, enable_auto_commit=False, max_partition_fetch_bytes=settings.kafka_max_message_bytes
        )
        await reader.start()
    try:
        if reader is not None:
            await _from_the_end(reader, [settings.progress_topic, settings.results_topic])
        producer = AIOKafkaProducer(**kafka, max_request_size=settings.kafka_max_message_bytes, acks="all")
        await producer.start()
        try:
            for job in jobs:
                assert job.job_id is not None
                value = job.model_dump_json(exclude_none=True).encode()
                await producer.send_and_wait(settings.requests_topic, value=value, key=job.job_id.encode())
        finally:
            await producer.stop()
        progress = {job.job_id: JobProgress(total=len(job.items)) for job in jobs if job.job_id}
        if reader is not None:
            async with asyncio.timeout(timeout_s):
                await _follow(reader, settings, progress, on_result, on_event)
        return progress
    finally:
        if reader is not None:
            await reader.stop()


async def _from_the_end(reader: AIOKafkaConsumer, topics: list[str]) -> None:
    partitions: list[TopicPartition] = []
    for topic in topics:
        partitions += await topic_partitions(reader, topic)
    reader.assign(partitions)
    await reader.seek_to_end(*partitions)
    for tp in partitions:
        await reader.position(tp)  # resolve now: later messages must not be skipped


async def _follow(
    reader: AIOKafkaConsumer,
    settings: Settings,
    progress: dict[str, JobProgress],
    on_result: OnResult | None,
    on_event: OnEvent | None,
) -> None:
    while not all(job.done for job in progress.values()):
        batches = await reader.getmany(timeout_ms=200)
        for tp, records in batches.items():
            for record in records:
                data = json.loads(record.value)
                job = progress.get(data.get("job_id"))
                if job is None:
                    continue  # someone else's job
                if tp.topic == settings.results_topic:
                    result = EvaluationResult.model_validate(data)
                    if result.result_id not in job.results:
                        job.results[result.result_id] = result
                        if on_result is not None:
                            on_result(result)
                else:
                    if data["event"] == "complete":
                        job.complete = data["data"]
                    if on_event is not None:
                        on_event(data)
