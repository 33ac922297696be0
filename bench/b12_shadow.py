"""B12: the live consumers' throughput with a shadow grading 10 % beside them, and without.

Two ``texteval run --engine fake`` processes (``ServiceProcess``): the live
one, and in one arm a shadow (``SHADOW=true``, its own group and topics,
``SHADOW_SAMPLE_RATE=0.1``) reading the same requests. Each repetition times
one job of N items from produce to the live ``complete`` event, both arms
alternately (``arm_order``); the shadow is started and ready before its
arm's clock starts, and has caught up with every earlier request (its
group's offsets committed to the end of the requests topic): the clock
sees a shadow in its steady state, not one working off a backlog. Target: with the shadow, the live throughput is within
3 % of without (issue 32). On this machine both processes and the broker
share two cores: what it measures is the shadow's whole cost on one host,
an upper bound of what a shadow on its own GPU host takes from the live path.
"""

from __future__ import annotations

import time
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
from bench.common import BenchResult, Scale, arm_order, median, tagged_items
from consumer.testing.processes import ServiceProcess
from consumer.testing.topics import committed_to_end, create_topics

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
    # CPU seconds spent inside each measured job: load-independent, so the shadow's cost
    # can be read even where other work shares the cores.
    cpu: dict[str, list[float]] = {"live": [], "shadow": []}
    try:
        await live.wait_healthy()
        async with (
            JobProducer(settings) as producer,
            output_reader(settings, [settings.kafka.progress_topic], fetch_max_wait_ms=20) as reader,
        ):

            async def one_job(tag: str, shadow: ServiceProcess | None = None) -> float:
                job_id = new_job_id(tag)
                payload = encode_job(job_id, tagged_items(items, job_id))
                procs = {"live": live, "shadow": shadow} if shadow is not None else {"live": live}
                before = {name: _cpu_s(proc) for name, proc in procs.items()}
                started = time.perf_counter()
                await producer.send([(job_id, payload)])
                await wait_complete(reader, settings.kafka.progress_topic, [job_id], timeout_s=900)
                rate = items / (time.perf_counter() - started)
                if shadow is not None:
                    for name, proc in procs.items():
                        cpu[name].append(_cpu_s(proc) - before[name])
                return rate

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
                        # Caught up first: the requests produced while no shadow ran (the warm-up,
                        # the other arm's) would otherwise be graded inside this arm's clock, a
                        # backlog no steady shadow has.
                        if not await committed_to_end(
                            kafka.bootstrap, shadow_settings.kafka.group_id, settings.kafka.requests_topic, 600
                        ):
                            raise RuntimeError("B12: the shadow did not catch up with the requests topic")
                        rates[arm].append(await one_job(f"b12-r{rep}-shadow", shadow))
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
    cpu_share = median([s / max(li, 1e-9) for s, li in zip(cpu["shadow"], cpu["live"], strict=True)])
    return BenchResult(
        id=ID,
        what=f"{WHAT}: one job of {items} items per arm, {scale.reps} repetitions",
        result=f"alone {alone:.0f} items/s, with a shadow at 10 % {shadowed:.0f} items/s: **{ratio:.3f}×**",
        target=TARGET,
        met=ratio >= TARGET_RATIO,
        figures={
            "alone_items_per_s": alone,
            "with_shadow_items_per_s": shadowed,
            "ratio": ratio,
            "shadow_cpu_share_of_live": cpu_share,
        },
        details=[
            *(f"{arm} (items/s): " + ", ".join(f"{x:.0f}" for x in xs) for arm, xs in rates.items()),
            "CPU seconds in the shadowed jobs, live: "
            + ", ".join(f"{x:.2f}" for x in cpu["live"])
            + "; shadow: "
            + ", ".join(f"{x:.2f}" for x in cpu["shadow"])
            + f" (the shadow's CPU {cpu_share:.1%} of the live process's, median)",
        ],
        notes=[
            f"fake engine {CONCURRENCY} slots × {DELAY_MS} ms in both processes; the shadow reads every request"
            " and grades the items of its 10 % sample (hash of job_id and id_alumno), results to its own topic.",
            "Live, shadow and the broker share this machine's cores: on a GPU host the shadow runs elsewhere.",
        ],
    )


def _cpu_s(service: ServiceProcess) -> float:
    """The process's CPU seconds so far (user + system, its threads included)."""
    assert service.proc is not None
    times = psutil.Process(service.proc.pid).cpu_times()
    return float(times.user + times.system)
