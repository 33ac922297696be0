"""B4: the pipeline's ceiling: items/s through broker → consumer → results topic with an instant engine.

With ``FakeEngine()`` (no delay) everything measured is ours and the
broker's: request parsing, prompts, validation, result messages, producing,
and reading them back. Timed from producing the jobs to reading the last
result; median of the repetitions. Target ≥ 3,000 items/s.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bench.broker_io import (
    JobProducer,
    KafkaTarget,
    consumer_ready,
    encode_job,
    fresh_settings,
    new_job_id,
    output_reader,
)
from bench.common import BenchResult, Scale, median, tagged_items
from consumer.engine.fake import FakeEngine
from consumer.metrics import Metrics

if TYPE_CHECKING:
    from consumer.kafka import Record, TopicReader


ID, TARGET_ITEMS_PER_S = "B4", 3000.0
WHAT = "pipeline ceiling, instant fake engine: produce → all results read"
TARGET = f"≥ {TARGET_ITEMS_PER_S:,.0f} items/s"


async def _timed_jobs(
    producer: JobProducer, reader: TopicReader, n_jobs: int, n_items: int, tag: str
) -> tuple[int, float]:
    """Produce ``n_jobs`` at once; (items, seconds until the last result is read)."""
    values = []
    for j in range(n_jobs):
        job_id = new_job_id(f"{tag}-j{j}")
        values.append((job_id, encode_job(job_id, tagged_items(n_items, f"{tag}-j{j}"))))
    expected = {job_id.encode(): n_items for job_id, _ in values}
    seen = dict.fromkeys(expected, 0)

    def on_record(record: Record) -> None:
        if record.key in seen:
            seen[record.key] += 1

    started = time.perf_counter()
    await producer.send(values)
    await reader.until(lambda: seen == expected, on_record, timeout_s=600)
    return n_items * n_jobs, time.perf_counter() - started


async def run(kafka: KafkaTarget, scale: Scale) -> BenchResult:
    settings = await fresh_settings(kafka)
    rates: list[float] = []
    details: list[str] = []
    async with (
        consumer_ready(settings, FakeEngine(), Metrics()),
        JobProducer(settings) as producer,
        # Results are counted by key (the job id), never decoded: the reader
        # shares the process with the consumer and must stay cheap.
        output_reader(settings, [settings.kafka.results_topic], fetch_max_wait_ms=10) as reader,
    ):
        await _timed_jobs(producer, reader, 1, 100, "b4-warm")  # imports, connections, buffers
        for rep in range(scale.reps):
            total, seconds = await _timed_jobs(producer, reader, scale.b4_jobs, scale.b4_items, f"b4-r{rep}")
            rates.append(total / seconds)
            details.append(f"{total} items in {seconds:.2f} s = {rates[-1]:,.0f} items/s")
            print(f"  B4 rep {rep + 1}/{scale.reps}: {details[-1]}", flush=True)
    rate = median(rates)
    return BenchResult(
        id=ID,
        what=f"pipeline ceiling, instant fake engine: {scale.b4_jobs} job(s) × {scale.b4_items} items at once,"
        " produce → all results read",
        result=f"**{rate:,.0f} items/s**",
        target=TARGET,
        met=rate >= TARGET_ITEMS_PER_S,
        figures={"items_per_s": rate},
        details=details,
        notes=[
            f"In-process consumer (`consumer_running`), MAX_INFLIGHT_ITEMS {settings.jobs.max_inflight_items},"
            f" MAX_CONCURRENT_JOBS {settings.jobs.max_concurrent_jobs}, KAFKA_LINGER_MS {settings.kafka.linger_ms};"
            " the reader shares its process.",
        ],
    )
