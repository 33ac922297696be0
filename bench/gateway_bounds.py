"""Issue 28's two gateway bounds, against real processes: a broker, ``texteval gateway``.

    .venv/bin/python -m bench.gateway_bounds [--streams 1000] [--downloads 64] [--items 2000]
                                             [--seconds 15] [--bodies 10] [--body-mb 16]

- **/health under load**: an open gateway (no keys) at its stream cap
  (``--streams`` SSE streams of a running job, ``GATEWAY_MAX_STREAMS``; a
  tenth more are attempted and must be refused), a finished job of
  ``--items`` results (its progress events produced straight to the progress
  topic, as a consumer writes them), then ``--downloads`` clients downloading
  its results CSV over and over for ``--seconds`` while a prober in another
  process (so this process's own event loop does not delay it) asks
  ``/health`` every 50 ms on a fresh connection, as a kubelet does. Target:
  p99 < 100 ms.
- **RSS with big bodies**: a fresh gateway process, then ``--bodies``
  concurrent ``POST /evaluate`` of ``--body-mb`` MB each (valid requests of
  2,000 items). The gateway's peak RSS is its ``VmHWM`` (the kernel's
  high-water mark, no sampling gap). Target: < 512 MiB (the pod's limit in
  ``deploy/k8s/gateway.yaml``).

Prints the figures, one line each, then all of them as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from aiokafka import AIOKafkaProducer

from bench.b8_gateway import _accepted, _batch, _complete, _Gateway
from bench.broker_io import KafkaTarget, fresh_settings, kafka_target, new_job_id
from bench.common import machine_description, percentile
from consumer.kafka import client_kwargs
from consumer.settings import Settings

HEALTH_TARGET_MS, RSS_TARGET_MIB = 100.0, 512.0
PROBE_EVERY_S = 0.05
RESULTS_PER_EVENT = 50


async def _produce_jobs(settings: Settings, finished: str, running: str, items: int) -> None:
    """A finished job of ``items`` results and a running one, as a consumer writes their events."""
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=5)
    await producer.start()
    try:
        topic, acks = settings.kafka.progress_topic, []
        values = [_accepted(finished, items)]
        values += [_batch(finished, n, items, RESULTS_PER_EVENT) for n in range(1, items // RESULTS_PER_EVENT + 1)]
        for value in [*values, _complete(finished, items)]:
            acks.append(await producer.send(topic, value=value, key=finished.encode()))
        for value in (_accepted(running, 10_000), _batch(running, 1, 10_000)):
            acks.append(await producer.send(topic, value=value, key=running.encode()))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def _open_streams(
    client: httpx.AsyncClient, job_id: str, attempts: int
) -> tuple[list[asyncio.Task[None]], dict[str, int]]:
    """``attempts`` streams of ``job_id``; returns their tasks and the answers' status counts, once all answered."""
    statuses: dict[str, int] = {}
    answered = asyncio.Event()

    async def follow() -> None:
        async with client.stream("GET", f"/stream/{job_id}") as response:
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            if sum(statuses.values()) == attempts:
                answered.set()
            async for _ in response.aiter_lines():
                pass

    tasks = [asyncio.create_task(follow()) for _ in range(attempts)]
    await asyncio.wait_for(answered.wait(), 120)
    return tasks, statuses


async def _download(client: httpx.AsyncClient, job_id: str, until: float, rows: list[int]) -> int:
    """Download the job's results CSV until ``until`` (monotonic); returns how many times."""
    count = 0
    while time.monotonic() < until:
        try:
            response = await client.get(f"/jobs/{job_id}/results")
        except httpx.RemoteProtocolError:
            continue  # a kept-alive connection the server had just closed (idle past its keep-alive): again
        response.raise_for_status()
        if not rows:
            rows.append(response.text.count("\n") - 1)  # less the header
        count += 1
    return count


async def _probe(base: str, seconds: float) -> list[float]:
    """``/health`` latencies (ms) measured by a prober in its own process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.gateway_bounds", "probe", base, str(seconds), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    latencies: list[float] = json.loads(out)
    return latencies


def probe_main(base: str, seconds: float) -> None:
    """The prober: a fresh connection per probe (the standard library's client: next to no
    client-side work), every ``PROBE_EVERY_S``; prints the latencies (ms), a failure (no 200
    within 10 s) as 10 s."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    latencies, until = [], time.monotonic() + seconds
    while time.monotonic() < until:
        started = time.perf_counter()
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
        except OSError:  # a timeout among them: a failed probe
            ok = False
        finally:
            connection.close()
        latencies.append((time.perf_counter() - started) * 1000.0 if ok else 10_000.0)
        time.sleep(max(0.0, PROBE_EVERY_S - (time.perf_counter() - started)))
    print(json.dumps(latencies))


async def health_under_load(kafka: KafkaTarget, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    settings = await fresh_settings(kafka, GATEWAY_MAX_STREAMS=args.streams)
    finished, running = new_job_id("bounds-done"), new_job_id("bounds-live")
    await _produce_jobs(settings, finished, running, args.items)
    attempts = args.streams + args.streams // 10
    limits = httpx.Limits(max_connections=attempts + args.downloads + 10, max_keepalive_connections=attempts + 10)
    async with (
        _Gateway(settings, log_dir / "gateway-health.log") as gateway,
        httpx.AsyncClient(base_url=gateway.base, limits=limits, timeout=httpx.Timeout(60, read=None)) as client,
    ):
        await _wait_until_known(client, [finished, running])
        quiet = await _probe(gateway.base, 3.0)
        streams, statuses = await _open_streams(client, running, attempts)
        try:
            rows: list[int] = []
            until = time.monotonic() + args.seconds
            cpu_before = _cpu_s(gateway)
            probe = asyncio.create_task(_probe(gateway.base, args.seconds))
            counts = await asyncio.gather(*(_download(client, finished, until, rows) for _ in range(args.downloads)))
            loaded = await probe
            cpu_share = (_cpu_s(gateway) - cpu_before) / args.seconds
            rss = gateway.rss_mb()
        finally:
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
    return {"streams_attempted": attempts, "stream_answers": statuses, "result_rows": rows[0] if rows else 0,
            "downloads": sum(counts), "downloads_per_s": sum(counts) / args.seconds, "health_probes": len(loaded),
            "health_quiet_p50_ms": percentile(quiet, 50), "health_quiet_p99_ms": percentile(quiet, 99),
            "health_p50_ms": percentile(loaded, 50), "health_p99_ms": percentile(loaded, 99),
            "health_max_ms": max(loaded), "gateway_rss_mb": rss, "gateway_cpu_share": cpu_share}  # fmt: skip


def _cpu_s(gateway: _Gateway) -> float:
    """CPU seconds the gateway process has used (user + system)."""
    assert gateway.proc is not None
    times = psutil.Process(gateway.proc.pid).cpu_times()
    return float(times.user + times.system)


async def _wait_until_known(client: httpx.AsyncClient, job_ids: list[str]) -> None:
    deadline = time.monotonic() + 120
    for job_id in job_ids:
        while (await client.get(f"/jobs/{job_id}")).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway never read {job_id}")
            await asyncio.sleep(0.1)


def _big_body(body_bytes: int, n_items: int = 2000) -> bytes:
    """A valid request of ``n_items`` items, ``body_bytes`` long (the answers fill it)."""
    shell = {"curso": "3r ESO", "consigna": "Explica la fotosíntesi.", "id_alumno": "A0000", "respuesta": ""}
    per_item = body_bytes // n_items - len(json.dumps(shell)) - 1
    text = "La fotosintesi transforma la llum en energia quimica per a la planta. "  # ASCII: one byte a character
    words = (text * (per_item // len(text) + 1))[:per_item]
    items = [{**shell, "id_alumno": f"A{i:04d}", "respuesta": words} for i in range(n_items)]
    return json.dumps({"items": items}, ensure_ascii=True).encode()


def _vm_hwm_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM")


async def rss_with_big_bodies(kafka: KafkaTarget, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    settings = await fresh_settings(kafka)
    body = _big_body(int(args.body_mb * 1_000_000))
    headers = {"Content-Type": "application/json"}
    async with (
        _Gateway(settings, log_dir / "gateway-bodies.log") as gateway,
        httpx.AsyncClient(base_url=gateway.base, timeout=httpx.Timeout(120)) as client,
    ):
        assert gateway.proc is not None
        rss_start = gateway.rss_mb()
        answers = await asyncio.gather(
            *(client.post("/evaluate", content=body, headers=headers) for _ in range(args.bodies))
        )
        peak = _vm_hwm_mib(gateway.proc.pid)
        rss_after = gateway.rss_mb()
    statuses: dict[str, int] = {}
    for answer in answers:
        statuses[str(answer.status_code)] = statuses.get(str(answer.status_code), 0) + 1
    return {"body_bytes": len(body), "bodies": args.bodies, "body_answers": statuses, "rss_start_mib": rss_start,
            "rss_peak_mib": peak, "rss_after_mib": rss_after}  # fmt: skip


def report(health: dict[str, Any], rss: dict[str, Any]) -> str:
    met_health = health["health_p99_ms"] < HEALTH_TARGET_MS
    met_rss = rss["rss_peak_mib"] < RSS_TARGET_MIB
    return "\n".join([
        f"streams: {health['streams_attempted']} attempted, answers {health['stream_answers']}",
        f"results downloads: {health['downloads']} ({health['downloads_per_s']:.1f}/s) of {health['result_rows']} rows",
        f"/health quiet: p50 {health['health_quiet_p50_ms']:.1f} ms, p99 {health['health_quiet_p99_ms']:.1f} ms",
        f"/health at the cap + downloads ({health['health_probes']} probes): p50 {health['health_p50_ms']:.1f} ms, "
        f"p99 {health['health_p99_ms']:.1f} ms, max {health['health_max_ms']:.1f} ms "
        f"(target p99 < {HEALTH_TARGET_MS:.0f} ms: {'met' if met_health else 'NOT met'})",
        f"gateway RSS with the streams open: {health['gateway_rss_mb']:.0f} MB; its CPU while loaded: "
        f"{health['gateway_cpu_share']:.0%} of one core",
        f"{rss['bodies']} concurrent bodies of {rss['body_bytes'] / 1e6:.1f} MB: answers {rss['body_answers']}; RSS "
        f"{rss['rss_start_mib']:.0f} MiB at start, peak {rss['rss_peak_mib']:.0f} MiB, {rss['rss_after_mib']:.0f} MiB "
        f"after (target < {RSS_TARGET_MIB:.0f} MiB: {'met' if met_rss else 'NOT met'})",
    ])  # fmt: skip


async def run(kafka: KafkaTarget, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    health = await health_under_load(kafka, args, log_dir)
    rss = await rss_with_big_bodies(kafka, args, log_dir)
    return {"health": health, "rss": rss}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="GATEWAY_MAX_STREAMS, all of them opened")
    parser.add_argument("--downloads", type=int, default=64, help="concurrent results downloads")
    parser.add_argument("--items", type=int, default=2000, help="results of the downloaded job")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the downloads and the prober run")
    parser.add_argument("--bodies", type=int, default=10, help="concurrent POST /evaluate bodies")
    parser.add_argument("--body-mb", type=float, default=16.0, help="size of each body (10^6 bytes)")
    return parser.parse_args(argv)


def main() -> None:
    if sys.argv[1:2] == ["probe"]:
        probe_main(sys.argv[2], float(sys.argv[3]))
        return
    args = parse_args()
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), vars(args))
    print("\n".join(machine_description()))
    with tempfile.TemporaryDirectory() as tmp, kafka_target() as kafka:
        figures = asyncio.run(run(kafka, args, Path(tmp)))
    print(f"Load average at the end (1/5/15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(report(figures["health"], figures["rss"]))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
