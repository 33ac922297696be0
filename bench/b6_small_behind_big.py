"""B6: a class of 20 behind four 2000-text batches, ``fair`` vs ``fifo``.

The issue's case: fake engine with a GPU-like batch (64 at a time, 100 ms
each: an ideal 640 items/s), MAX_NUM_SEQS 64 so the scheduler's depth is
derived as in production; four 2000-item jobs produced at once, 2 s later
one 20-item job. Each arm is its own in-process consumer (``consumer_running``)
with ``SCHEDULING_POLICY`` set; arms alternate. Figures: the small job's
latency (produced -> its ``complete`` read), and all five jobs' items over
the time from the first request produced to the last ``complete`` read,
against the engine's ideal.

``run_trace`` (produce jobs on a timetable, time each one's ``complete``)
is shared with B7.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.broker_io import JobProducer, KafkaTarget, consumer_ready, encode_job, fresh_settings, output_reader
from bench.common import BenchResult, Scale, arm_order, median, tagged_items
from consumer.engine.fake import FakeEngine
from consumer.metrics import Metrics
from consumer.settings import SchedulingPolicy, Settings

if TYPE_CHECKING:
    from consumer.kafka import Record  # an alias for type checkers only: not importable at run time

ID = "B6"
WHAT = "a 20-item job produced 2 s after four 2000-item jobs (fake engine 64 × 100 ms), fair vs fifo"
TARGET_SMALL_S, WORST_SMALL_S, TARGET_THROUGHPUT = 1.0, 2.0, 0.9
TARGET = f"small job ≤ {TARGET_SMALL_S:.0f} s (≤ {WORST_SMALL_S:.0f} s worst); all five ≥ {TARGET_THROUGHPUT} of ideal"
ARMS = (SchedulingPolicy.FAIR, SchedulingPolicy.FIFO)


@dataclass(frozen=True, slots=True)
class TraceJob:
    at_s: float  # when it is produced, from the start of the trace
    job_id: str
    items: int


@dataclass(frozen=True, slots=True)
class TraceRun:
    latency_s: dict[str, float]  # job id -> produced .. complete read
    span_s: float  # first produced .. last complete read
    items: int


@dataclass(frozen=True, slots=True)
class FakeGpu:
    delay_s: float
    concurrency: int

    @property
    def ideal_items_per_s(self) -> float:
        return self.concurrency / self.delay_s

    @property
    def depth(self) -> int:
        """The scheduler's engine depth, as the consumer derives it from ``MAX_NUM_SEQS``."""
        depth = Settings(_env_file=None, MAX_NUM_SEQS=self.concurrency).engine_depth_on("cpu")  # type: ignore[call-arg]
        assert depth is not None
        return depth


async def run_trace(
    kafka: KafkaTarget,
    policy: SchedulingPolicy,
    jobs: list[TraceJob],
    gpu: FakeGpu,
    timeout_s: float = 900.0,
    **overrides: object,
) -> TraceRun:
    """One consumer with ``policy`` (and settings ``overrides``); the jobs produced on their timetable;
    each one's completion timed."""
    settings = await fresh_settings(kafka, MAX_NUM_SEQS=gpu.concurrency, SCHEDULING_POLICY=policy.value, **overrides)
    engine = FakeEngine(delay_s=gpu.delay_s, max_concurrency=gpu.concurrency)
    values = {job.job_id: encode_job(job.job_id, tagged_items(job.items, job.job_id)) for job in jobs}
    produced: dict[str, float] = {}
    done: dict[str, float] = {}

    def on_record(record: Record) -> None:
        value = record.value
        if value is not None and b'"complete"' in value:
            event = json.loads(value)
            if event.get("event") == "complete" and event["job_id"] in values:
                done.setdefault(event["job_id"], time.perf_counter())

    async with (
        consumer_ready(settings, engine, Metrics()),
        JobProducer(settings) as producer,
        output_reader(settings, [settings.kafka.progress_topic]) as reader,
    ):
        start = time.perf_counter()

        async def produce() -> None:
            for job in sorted(jobs, key=lambda j: j.at_s):
                await asyncio.sleep(max(0.0, start + job.at_s - time.perf_counter()))
                produced[job.job_id] = time.perf_counter()
                await producer.send([(job.job_id, values[job.job_id])])

        producing = asyncio.create_task(produce())
        try:
            await reader.until(lambda: len(done) == len(jobs), on_record, timeout_s=timeout_s)
        finally:
            producing.cancel()
    return TraceRun(
        latency_s={job_id: done[job_id] - produced[job_id] for job_id in done},
        span_s=max(done.values()) - min(produced.values()),
        items=sum(job.items for job in jobs),
    )


def _shape(scale: Scale) -> tuple[FakeGpu, int, int, float]:
    """(engine, big job items, small job items, delay of the small job)."""
    if scale.name == "full":
        return FakeGpu(0.1, 64), 2000, 20, 2.0
    return FakeGpu(0.02, 16), 200, 5, 0.3


async def run(kafka: KafkaTarget, scale: Scale) -> BenchResult:
    gpu, big, small, small_at = _shape(scale)
    figures: dict[str, dict[str, list[float]]] = {arm: {"small_s": [], "share": []} for arm in ARMS}
    details: list[str] = []
    for rep in range(scale.reps):
        for arm in map(SchedulingPolicy, arm_order(rep, (ARMS[0].value, ARMS[1].value))):
            tag = f"b6{arm.value}-r{rep}"
            jobs = [TraceJob(0.0, f"{tag}-big{i}", big) for i in range(4)]
            jobs.append(TraceJob(small_at, f"{tag}-small", small))
            trace = await run_trace(kafka, arm, jobs, gpu)
            small_s = trace.latency_s[f"{tag}-small"]
            share = trace.items / trace.span_s / gpu.ideal_items_per_s
            figures[arm]["small_s"].append(small_s)
            figures[arm]["share"].append(share)
            bigs = sorted(trace.latency_s[j.job_id] for j in jobs[:4])
            details.append(
                f"{arm.value}: small {small_s:.2f} s, big {', '.join(f'{s:.1f}' for s in bigs)} s,"
                f" all {trace.items / trace.span_s:.0f} items/s = {share:.3f} of ideal"
            )
            print(f"  B6 rep {rep + 1}/{scale.reps}: {details[-1]}", flush=True)
    fair_small, fifo_small = median(figures[ARMS[0]]["small_s"]), median(figures[ARMS[1]]["small_s"])
    fair_share, fifo_share = median(figures[ARMS[0]]["share"]), median(figures[ARMS[1]]["share"])
    worst = max(figures[ARMS[0]]["small_s"])
    return BenchResult(
        id=ID,
        what=WHAT
        if scale.name == "full"
        else f"{WHAT} (smoke: 4 × {big}, then {small}; {gpu.concurrency} × {gpu.delay_s * 1000:.0f} ms)",
        result=f"small job **{fair_small:.2f} s** fair vs {fifo_small:.2f} s fifo ({fifo_small / fair_small:.0f}×);"
        f" all five at **{fair_share:.3f}** of ideal (fifo {fifo_share:.3f})",
        target=TARGET,
        met=fair_small <= TARGET_SMALL_S and worst <= WORST_SMALL_S and fair_share >= TARGET_THROUGHPUT,
        figures={
            "fair_small_s": fair_small,
            "fifo_small_s": fifo_small,
            "fair_small_worst_s": worst,
            "fair_throughput_share": fair_share,
            "fifo_throughput_share": fifo_share,
        },
        details=details,
        notes=[
            f"Ideal = {gpu.concurrency} / {gpu.delay_s} s = {gpu.ideal_items_per_s:.0f} items/s; MAX_NUM_SEQS"
            f" {gpu.concurrency} (engine depth {gpu.depth});"
            " latency = produced → `complete` read; throughput = all items / first produce → last `complete`.",
        ],
    )
