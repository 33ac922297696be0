"""B12: the live consumers' throughput with a shadow grading 10 % beside them, and without.

Two ``texteval run --engine fake`` processes (``ServiceProcess``): the live
one, and in one arm a shadow (``SHADOW=true``, its own group and topics,
``SHADOW_SAMPLE_RATE=0.1``) reading the same requests. Each repetition times
one job of N items from produce to the live ``complete`` event, both arms
alternately (``arm_order``); the shadow is started and ready before its
arm's clock starts. Target: with the shadow, the live throughput is within
3 % of without (issue 32). On this machine both processes and the broker
share two cores: what it measures is the shadow's whole cost on one host,
an upper bound of what a shadow on its own GPU host takes from the live path.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.broker_io import (
    JobProducer,
    KafkaTarget,
    encode_job,
    fresh_settings,
    new_job_id,
    output_reader,
    wait_complete,
)
from bench.common import BenchResult, Scale, arm_order, median, tagged_items
from consumer.testing.processes import ServiceProcess
from consumer.testing.topics import create_topics

ID, WHAT = "B12", "live throughput with a shadow at 10 % (fake engines, own processes) vs without"
TARGET_RATIO = 0.97
TARGET = "with shadow ≥ 0.97× without"
DELAY_MS, CONCURRENCY = 50, 64  # a GPU-like engine: 64 sequences in a batch step of 50 ms
ARMS = ("alone", "with shadow")


async def run(kafka: KafkaTarget, scale: Scale, log_dir: Path) -> BenchResult:
    settings = await fresh_settings(kafka)
    shadow_settings = settings.with_(
        shadow=True,
        shadow_sample_rate=0.1,
        kafka_group_id=f"{settings.kafka.group_id}-shadow",
        shadow_results_topic=f"{settings.kafka.results_topic}.shadow",
        shadow_checkpoints_topic=f"{settings.kafka.checkpoints_topic}.shadow",
    )
    await create_topics(
        kafka.bootstrap, [shadow_settings.kafka.shadow_results_topic, shadow_settings.kafka.shadow_checkpoints_topic]
    )
    items = scale.b4_items
    live = ServiceProcess(settings, log_dir, "b12-live", delay_ms=DELAY_MS, concurrency=CONCURRENCY)
    await live.start()
    rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
    try:
        await live.wait_healthy()
        async with (
            JobProducer(settings) as producer,
            output_reader(settings, [settings.kafka.progress_topic], fetch_max_wait_ms=20) as reader,
        ):

            async def one_job(tag: str) -> float:
                job_id = new_job_id(tag)
                payload = encode_job(job_id, tagged_items(items, job_id))
                started = time.perf_counter()
                await producer.send([(job_id, payload)])
                await wait_complete(reader, settings.kafka.progress_topic, [job_id], timeout_s=900)
                return items / (time.perf_counter() - started)

            await one_job("b12-warm")
            for rep in range(scale.reps):
                for arm in arm_order(rep, ARMS):
                    if arm == "alone":
                        rates[arm].append(await one_job(f"b12-r{rep}-alone"))
                        continue
                    shadow = ServiceProcess(
                        shadow_settings, log_dir, f"b12-shadow-{rep}", delay_ms=DELAY_MS, concurrency=CONCURRENCY
                    )
                    await shadow.start()
                    try:
                        await shadow.wait_healthy()
                        rates[arm].append(await one_job(f"b12-r{rep}-shadow"))
                        shadow.terminate()
                        await shadow.wait(60)
                    finally:
                        await shadow.close()
                print(f"  B12 rep {rep}: alone {rates['alone'][-1]:.0f}, with shadow"
                      f" {rates['with shadow'][-1]:.0f} items/s", flush=True)  # fmt: skip
        live.terminate()
        await live.wait(60)
    finally:
        await live.close()
    alone, shadowed = median(rates["alone"]), median(rates["with shadow"])
    ratio = shadowed / alone
    return BenchResult(
        id=ID,
        what=f"{WHAT}: one job of {items} items per arm, {scale.reps} repetitions",
        result=f"alone {alone:.0f} items/s, with a shadow at 10 % {shadowed:.0f} items/s: **{ratio:.3f}×**",
        target=TARGET,
        met=ratio >= TARGET_RATIO,
        figures={"alone_items_per_s": alone, "with_shadow_items_per_s": shadowed, "ratio": ratio},
        details=[f"{arm} (items/s): " + ", ".join(f"{x:.0f}" for x in xs) for arm, xs in rates.items()],
        notes=[
            f"fake engine {CONCURRENCY} slots × {DELAY_MS} ms in both processes; the shadow reads every request"
            " and grades the items of its 10 % sample (hash of job_id and id_alumno), results to its own topic.",
            "Live, shadow and the broker share this machine's cores: on a GPU host the shadow runs elsewhere.",
        ],
    )
