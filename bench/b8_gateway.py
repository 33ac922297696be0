"""B8: the HTTP gateway, from a progress event acknowledged by the broker to its delivery on an SSE stream.

``texteval gateway`` runs as its own process (its RSS is its own); the SSE
clients (httpx, one connection per stream) and the producer share this
process. The producer plays the consumer: it produces ``batch_complete``
events straight to the progress topic, one at a time, paced, and stamps the
wall clock when ``send_and_wait`` returns (the broker's ack). A client
stamps the wall clock when it has parsed the event's ``data:`` line. Both
clocks are this machine's.

Arms: 1 open stream, then N open streams (one job each, events round-robin
over the jobs) while the gateway also keeps M finished jobs (produced before,
each with 20 results). RSS of the gateway process: after start, with the M
finished jobs, and with the N streams open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from aiokafka import AIOKafkaProducer

from bench.broker_io import KafkaTarget, fresh_settings, new_job_id
from bench.common import MIB, REPO, BenchResult, Scale, percentile
from consumer.kafka import client_kwargs
from consumer.settings import Settings
from consumer.testing.processes import service_env
from consumer.tools.broker import free_port

ID, TARGET_P99_MS = "B8", 20.0
WHAT = "gateway: progress event acked by the broker → delivered on an SSE stream"
TARGET = f"p99 < {TARGET_P99_MS:.0f} ms with 200 streams"
PACE_S = 0.01  # between events: latency is measured, not throughput

# name -> (events on 1 stream, streams, events per stream, finished jobs kept)
SIZES = {"full": (300, 200, 3, 1000), "smoke": (20, 20, 2, 50)}


def _event(kind: str, job_id: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"schema_version": 1, "event": kind, "job_id": job_id, "data": data}).encode()


def _accepted(job_id: str, total: int) -> bytes:
    return _event("accepted", job_id, {"total_items": total, "estimated_time_seconds": 1.0, "status": "processing"})


def _batch(job_id: str, number: int, total: int, results: int = 1) -> bytes:
    first = (number - 1) * results
    summaries = [{"id_alumno": f"A{i:04d}", "item_index": i, "status": "ok", "nota": 3,
                  "feedback": "Bon treball. Explica millor els passos del procés i posa exemples concrets." * 2}
                 for i in range(first, first + results)]  # fmt: skip
    done = first + results
    progress = {"completed": done, "total": total, "percentage": round(100 * done / total, 1),
                "elapsed_seconds": 1.0, "estimated_remaining_seconds": 1.0, "avg_time_per_item": 0.05}  # fmt: skip
    return _event("batch_complete", job_id, {"batch_number": number, "results": summaries, "progress": progress})


def _complete(job_id: str, total: int) -> bytes:
    data = {"total_processed": total, "succeeded": total, "failed": 0, "total_time_seconds": 1.0, "status": "completed"}
    return _event("complete", job_id, data)


class _Gateway:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> _Gateway:
        env = {**service_env(self.settings), "LOG_LEVEL": "WARNING", "GATEWAY_HOST": "127.0.0.1",
               "GATEWAY_PORT": str(self.port), "GATEWAY_API_KEYS": ""}  # fmt: skip
        with self._log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "consumer.tools.cli", "gateway", cwd=REPO, env=env, stdout=log, stderr=log
            )
        async with httpx.AsyncClient(base_url=self.base) as client:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/health")).status_code == 200:
                        return self
                if time.monotonic() > deadline or self.proc.returncode is not None:
                    raise RuntimeError(f"gateway did not get healthy; log: {self._log_path}")
                await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def rss_mb(self) -> float:
        assert self.proc is not None
        return float(psutil.Process(self.proc.pid).memory_info().rss) / MIB

    async def delivered_within(self, bound_s: float) -> float:
        """Share of the gateway's own live deliveries (record timestamp → SSE write) within ``bound_s``."""
        from prometheus_client.parser import text_string_to_metric_families

        async with httpx.AsyncClient(base_url=self.base) as client:
            text = (await client.get("/metrics")).text
        name = "texteval_gateway_event_delivery_latency_seconds"
        count = within = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == f"{name}_count":
                    count = sample.value
                elif sample.name == f"{name}_bucket" and float(sample.labels["le"]) == bound_s:
                    within = sample.value
        return within / count if count else 0.0

    async def jobs_kept(self) -> int:
        async with httpx.AsyncClient(base_url=self.base) as client:
            return int((await client.get("/health")).json()["jobs_kept"])


class _Streams:
    """Open SSE streams; receipt time of every (job_id, batch_number)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self.received: dict[tuple[str, int], float] = {}
        self.opened = 0
        self._tasks: list[asyncio.Task[None]] = []

    def open(self, job_id: str) -> None:
        self._tasks.append(asyncio.create_task(self._follow(job_id)))

    async def _follow(self, job_id: str) -> None:
        async with self._client.stream("GET", f"/stream/{job_id}") as response:
            self.opened += 1
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    now = time.time()
                    event = json.loads(line[6:])
                    if event.get("event") == "batch_complete":
                        self.received[(event["job_id"], event["data"]["batch_number"])] = now

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def _arm(producer: AIOKafkaProducer, topic: str, streams: _Streams, jobs: list[str], rounds: int) -> list[float]:
    """Produce ``rounds`` batch events per job, round-robin; latencies (ms) of each."""
    acked: dict[tuple[str, int], float] = {}
    for number in range(2, rounds + 2):  # batch 1 went out before the streams opened
        for job_id in jobs:
            await producer.send_and_wait(topic, value=_batch(job_id, number, 10_000), key=job_id.encode())
            acked[(job_id, number)] = time.time()
            await asyncio.sleep(PACE_S)
    await _wait(lambda: acked.keys() <= streams.received.keys(), 60, "events not delivered")
    return [(streams.received[k] - t) * 1000.0 for k, t in acked.items()]


async def _measure(client: httpx.AsyncClient, producer: AIOKafkaProducer, topic: str, count: int, rounds: int,
                   gateway: _Gateway) -> tuple[list[float], float]:  # fmt: skip
    """``count`` live jobs, one stream each; (latencies in ms, gateway RSS with the streams open)."""
    jobs = [new_job_id(f"b8-live{count}") for _ in range(count)]
    for job_id in jobs:
        await producer.send_and_wait(topic, value=_accepted(job_id, 10_000), key=job_id.encode())
        await producer.send_and_wait(topic, value=_batch(job_id, 1, 10_000), key=job_id.encode())
    for job_id in jobs:  # a stream opened before the gateway has read the job would say "Job not found"
        deadline = time.monotonic() + 30
        while (await client.get(f"/jobs/{job_id}")).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway never saw {job_id}")
            await asyncio.sleep(0.02)
    streams = _Streams(client)
    for job_id in jobs:
        streams.open(job_id)
    try:
        # Every stream open and its history (batch 1) delivered: from now on only live events.
        history = {(j, 1) for j in jobs}
        await _wait(lambda: history <= streams.received.keys(), 60, "streams did not open")
        latencies = await _arm(producer, topic, streams, jobs, rounds)
        return latencies, gateway.rss_mb()
    finally:
        await streams.close()


async def run(kafka: KafkaTarget, scale: Scale, log_dir: Path | None = None) -> BenchResult:
    single_events, n_streams, per_stream, kept_jobs = SIZES.get(scale.name, SIZES["smoke"])
    settings = await fresh_settings(kafka)
    topic = settings.kafka.progress_topic
    log_path = (log_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / "b8-gateway.log"
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=0)
    await producer.start()
    limits = httpx.Limits(max_connections=n_streams + 10, max_keepalive_connections=n_streams + 10)
    try:
        async with (
            _Gateway(settings, log_path) as gateway,
            httpx.AsyncClient(base_url=gateway.base, limits=limits, timeout=httpx.Timeout(30, read=None)) as client,
        ):
            rss_start = gateway.rss_mb()
            # M finished jobs, as a busy term leaves them within JOB_TTL_SECONDS.
            finished = [new_job_id("b8-done") for _ in range(kept_jobs)]
            sends = []
            for job_id in finished:
                for value in (_accepted(job_id, 20), _batch(job_id, 1, 20, results=20), _complete(job_id, 20)):
                    sends.append(await producer.send(topic, value=value, key=job_id.encode()))
            await asyncio.gather(*sends)
            await _wait_async(lambda: gateway.jobs_kept(), kept_jobs, 120)
            rss_jobs = gateway.rss_mb()

            results: dict[int, list[float]] = {}
            for count, rounds in ((1, single_events), (n_streams, per_stream)):
                results[count], rss_streams = await _measure(client, producer, topic, count, rounds, gateway)
            own_within = await gateway.delivered_within(0.02)
    finally:
        await producer.stop()

    one, many = results[1], results[n_streams]
    p50_1, p99_1 = percentile(one, 50), percentile(one, 99)
    p50_n, p99_n = percentile(many, 50), percentile(many, 99)
    figures = {"p50_1_ms": p50_1, "p99_1_ms": p99_1, "p50_n_ms": p50_n, "p99_n_ms": p99_n,
               "rss_start_mb": rss_start, "rss_jobs_mb": rss_jobs, "rss_streams_mb": rss_streams}  # fmt: skip
    return BenchResult(
        id=ID,
        what=f"{WHAT} ({n_streams} streams, {kept_jobs} finished jobs kept)",
        result=f"1 stream: p50 {p50_1:.1f} / p99 {p99_1:.1f} ms; {n_streams} streams: p50 {p50_n:.1f} /"
        f" **p99 {p99_n:.1f} ms**; RSS {rss_start:.0f} MB at start, {rss_jobs:.0f} MB with {kept_jobs} jobs,"
        f" {rss_streams:.0f} MB with {n_streams} streams",
        target=TARGET,
        met=p99_n < TARGET_P99_MS,
        figures=figures,
        notes=[
            f"{len(one)} events on 1 stream, {len(many)} events over {n_streams} streams (one job each,"
            f" round-robin), {PACE_S * 1000:.0f} ms apart; each finished job: 20 results of ~150 characters.",
            "The gateway is its own process; clients and producer share this one (receipt times err late).",
            f"The gateway's own histogram (record timestamp → SSE write, every live delivery): {own_within:.1%}"
            " ≤ 20 ms.",
        ],
    )


async def _wait_async(count: Any, at_least: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while await count() < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway did not keep {at_least} jobs")
        await asyncio.sleep(0.2)
