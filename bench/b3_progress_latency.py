"""B3: from an item's result being ready to its ``batch_complete`` event read from the progress topic.

Fake engine with a GPU-like batch (32 at a time, 50 ms each), BATCH_SIZE 10,
the consumer in-process. Ready time is the result's ``produced_at`` (set when
the result is built, right after the engine returns); receipt time is the
wall clock when a reader with ``fetch_max_wait_ms=5`` gets the batch event
that lists the item. Both clocks are this process's.

Two figures: (a) the item that completed its batch (its arrival triggered
the event): the pipeline's own latency, target p99 < 20 ms; (b) every item,
which adds the wait for its batch to fill (bounded by PROGRESS_FLUSH_MS).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import TYPE_CHECKING

from bench.broker_io import (
    JobProducer,
    KafkaTarget,
    consumer_ready,
    encode_job,
    fresh_settings,
    new_job_id,
    output_reader,
    wait_complete,
)
from bench.common import BenchResult, Scale, percentile, tagged_items
from consumer.engine.fake import FakeEngine
from consumer.metrics import Metrics

if TYPE_CHECKING:
    from consumer.kafka import Record


ID, TARGET_P99_MS = "B3", 20.0
WHAT = "progress latency: result ready → its `batch_complete` read"
TARGET = f"p99 < {TARGET_P99_MS:.0f} ms (completing item)"
BATCH_SIZE = 10
FAKE_DELAY_S, FAKE_CONCURRENCY = 0.05, 32


class _Latencies:
    """Joins results (ready time) with the batch events that list them (receipt time)."""

    def __init__(self, results_topic: str, progress_topic: str) -> None:
        self._results_topic = results_topic
        self._progress_topic = progress_topic
        self.ready: dict[str, float] = {}  # result_id -> produced_at (epoch s)
        self.reported: dict[str, float] = {}  # result_id -> receipt of its batch event
        self.completing: set[str] = set()  # result_ids whose arrival sent their batch

    def on_record(self, record: Record) -> None:
        received_at = time.time()
        if record.value is None:
            return
        data = json.loads(record.value)
        if record.topic == self._results_topic:
            self.ready[data["result_id"]] = datetime.fromisoformat(data["produced_at"]).timestamp()
        elif record.topic == self._progress_topic and data["event"] == "batch_complete":
            job_id, batch = data["job_id"], data["data"]
            ids = [f"{job_id}#{r['item_index']}" for r in batch["results"]]
            for result_id in ids:
                self.reported[result_id] = received_at
            # A full batch, or the job's last one, was sent because its last
            # item arrived; a shorter one was flushed by the timer.
            progress = batch["progress"]
            if len(ids) >= BATCH_SIZE or progress["completed"] == progress["total"]:
                self.completing.add(ids[-1])

    def ms(self, ids: set[str] | None = None) -> list[float]:
        chosen = self.reported.keys() if ids is None else ids
        return [(self.reported[i] - self.ready[i]) * 1000.0 for i in chosen if i in self.ready]


def _histogram_share_within(metrics: Metrics, bound_s: float) -> float:
    """Share of the consumer's own observations (ready -> batch event acked) within ``bound_s``."""
    name = "texteval_progress_event_latency_seconds"
    count = metrics.registry.get_sample_value(f"{name}_count") or 0.0
    within = metrics.registry.get_sample_value(f"{name}_bucket", {"le": str(bound_s)}) or 0.0
    return within / count if count else 0.0


async def run(kafka: KafkaTarget, scale: Scale) -> BenchResult:
    settings = await fresh_settings(kafka, BATCH_SIZE=BATCH_SIZE)
    engine = FakeEngine(delay_s=FAKE_DELAY_S, max_concurrency=FAKE_CONCURRENCY)
    metrics = Metrics()
    latencies = _Latencies(settings.kafka.results_topic, settings.kafka.progress_topic)
    details: list[str] = []
    async with (
        consumer_ready(settings, engine, metrics),
        JobProducer(settings) as producer,
        output_reader(settings, [settings.kafka.results_topic, settings.kafka.progress_topic]) as reader,
    ):
        for rep in range(scale.reps):
            job_id = new_job_id(f"b3-r{rep}")
            before = set(latencies.completing)
            await producer.send([(job_id, encode_job(job_id, tagged_items(scale.b3_items, f"b3-r{rep}")))])
            await wait_complete(reader, settings.kafka.progress_topic, [job_id], also=latencies.on_record)
            rep_ms = latencies.ms(latencies.completing - before)
            details.append(f"completing item p50 {percentile(rep_ms, 50):.1f} / p99 {percentile(rep_ms, 99):.1f} ms")
            print(f"  B3 rep {rep + 1}/{scale.reps}: {details[-1]}", flush=True)

    completing = latencies.ms(latencies.completing)
    every = latencies.ms()
    p50, p99 = percentile(completing, 50), percentile(completing, 99)
    all50, all99 = percentile(every, 50), percentile(every, 99)
    within = _histogram_share_within(metrics, 0.02)
    return BenchResult(
        id=ID,
        what=f"{WHAT} (fake engine, {scale.b3_items}-item jobs)",
        result=f"item completing its batch: p50 {p50:.1f} / **p99 {p99:.1f} ms**; every item: p50 {all50:.1f} / p99"
        f" {all99:.1f} ms",
        target=TARGET,
        met=p99 < TARGET_P99_MS,
        figures={"p50_ms": p50, "p99_ms": p99, "all_p50_ms": all50, "all_p99_ms": all99},
        details=details,
        notes=[
            f"{len(completing)} completing items, {len(every)} items in all, {scale.reps} job(s);"
            f" fake engine {FAKE_CONCURRENCY} at a time × {FAKE_DELAY_S * 1000:.0f} ms, BATCH_SIZE {BATCH_SIZE},"
            f" PROGRESS_FLUSH_MS {settings.jobs.progress_flush_ms}, KAFKA_LINGER_MS {settings.kafka.linger_ms}.",
            "Every item also waits for its batch to fill (here up to one engine round, 50 ms).",
            f"The consumer's own histogram (ready → batch event acked, every item): {within:.0%} ≤ 20 ms.",
            "Reader, consumer and engine share one process and event loop (receipt times err on the late side).",
        ],
    )
