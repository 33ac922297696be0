"""B5: ``texteval run --engine fake`` resident memory over many jobs, then many jobs at once.

The consumer runs as its own process (``consumer.testing.processes.ServiceProcess``)
so its RSS (psutil, children included) is the consumer's alone. Samples:
after a warm-up job (the start), after each of N sequential jobs, every
250 ms while M jobs run at once, and once more after they finish (the end).
Target: growth (end − start) < 50 MB, and flat across the sequential jobs
(second-half drift < 10 MB): a leak grows with every job.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import psutil

from bench.broker_io import (
    JobProducer,
    KafkaTarget,
    encode_job,
    fresh_settings,
    new_job_id,
    output_reader,
    wait_complete,
)
from bench.common import MIB, BenchResult, Scale, tagged_items
from consumer.testing.processes import ServiceProcess

ID, TARGET_GROWTH_MB, TARGET_DRIFT_MB = "B5", 50.0, 10.0
WHAT = "consumer RSS (own process), fake engine: sequential jobs, then many at once"
TARGET = f"growth < {TARGET_GROWTH_MB:.0f} MB, flat (drift < {TARGET_DRIFT_MB:.0f} MB)"
SAMPLE_EVERY_S = 0.25


def _rss_mb(proc: psutil.Process) -> float:
    rss = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            rss += child.memory_info().rss
    return float(rss) / MIB


async def run(kafka: KafkaTarget, scale: Scale, log_dir: Path) -> BenchResult:
    settings = await fresh_settings(kafka)
    service = ServiceProcess(settings, log_dir, "b5-consumer", delay_ms=0, concurrency=64)
    await service.start()
    try:
        await service.wait_healthy()
        assert service.proc is not None
        proc = psutil.Process(service.proc.pid)
        async with (
            JobProducer(settings) as producer,
            output_reader(settings, [settings.kafka.progress_topic], fetch_max_wait_ms=50) as reader,
        ):

            async def jobs(tag: str, count: int) -> None:
                ids = [new_job_id(f"{tag}-j{j}") for j in range(count)]
                await producer.send([(i, encode_job(i, tagged_items(scale.b5_items, i))) for i in ids])
                await wait_complete(reader, settings.kafka.progress_topic, ids, timeout_s=900)

            await jobs("b5-warm", 1)
            start = _rss_mb(proc)
            sequential: list[float] = []
            for n in range(scale.b5_jobs):
                await jobs(f"b5-seq{n}", 1)
                sequential.append(_rss_mb(proc))
            print(f"  B5: start {start:.0f} MB, after {scale.b5_jobs} jobs {sequential[-1]:.0f} MB", flush=True)

            during: list[float] = []

            async def sample() -> None:
                while True:
                    during.append(_rss_mb(proc))
                    await asyncio.sleep(SAMPLE_EVERY_S)

            sampler = asyncio.create_task(sample())
            try:
                await jobs("b5-burst", scale.b5_concurrent)
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            await asyncio.sleep(1.0)  # let the last commit and buffers settle
            end = _rss_mb(proc)
        service.terminate()
        await service.wait(60)
    finally:
        await service.close()

    peak = max([start, *sequential, *during, end])
    growth = end - start
    mid = sequential[len(sequential) // 2 - 1] if len(sequential) >= 2 else start
    drift = sequential[-1] - mid
    print(f"  B5: {scale.b5_concurrent} at once: max {peak:.0f} MB, end {end:.0f} MB", flush=True)
    return BenchResult(
        id=ID,
        what=f"consumer RSS, fake engine: {scale.b5_jobs} sequential jobs × {scale.b5_items} items, then"
        f" {scale.b5_concurrent} at once",
        result=f"start {start:.0f} MB, end {end:.0f} MB, max {peak:.0f} MB: **growth {growth:+.1f} MB**,"
        f" 2nd-half drift {drift:+.1f} MB",
        target=TARGET,
        met=growth < TARGET_GROWTH_MB and abs(drift) < TARGET_DRIFT_MB,
        figures={"rss_start_mb": start, "rss_end_mb": end, "rss_max_mb": peak, "growth_mb": growth, "drift_mb": drift},
        details=["RSS after each sequential job (MB): " + ", ".join(f"{x:.0f}" for x in sequential)],
        notes=[
            "`texteval run --engine fake --fake-delay-ms 0` as a subprocess; RSS of its process tree (psutil);"
            " start = after one warm-up job; end = 1 s after the concurrent jobs finished; max includes samples"
            f" every {SAMPLE_EVERY_S * 1000:.0f} ms during them.",
            f"Drift: RSS after the last sequential job minus after job {max(1, len(sequential) // 2)}.",
        ],
    )
