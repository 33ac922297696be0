"""The side HTTP server over real HTTP: uvicorn on an ephemeral port, in the test's own loop."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from consumer.health import HealthReport
from consumer.http import HttpServer, create_app
from consumer.metrics import Metrics


class FakeHealth:
    """Implements ``HealthSource``; tests flip its fields between requests."""

    def __init__(self) -> None:
        self.ready = True
        self.reasons: list[str] = []
        self.fail = False

    def health_report(self) -> HealthReport:
        if self.fail:
            raise RuntimeError("boom")
        body: dict[str, object] = {
            "model_loaded": self.ready,
            "gpu_available": False,
            "active_jobs": 2,
            "kafka": {"in_group": self.ready, "assigned_partitions": [0, 1]},
        }
        return HealthReport(ready=self.ready, reasons=list(self.reasons), body=body)


@asynccontextmanager
async def serving(health: FakeHealth, metrics: Metrics) -> AsyncIterator[tuple[HttpServer, httpx.AsyncClient]]:
    server = HttpServer(create_app(health, metrics), "127.0.0.1", 0, shutdown_timeout=1)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5.0) as client:
            yield server, client
    finally:
        await server.stop()


def sample(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == (labels or {}):
                return float(s.value)
    return None


async def test_health_ready_then_not_ready() -> None:
    health = FakeHealth()
    async with serving(health, Metrics()) as (_, client):
        r = await client.get("/health")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {
            "status": "healthy",
            "model_loaded": True,
            "gpu_available": False,
            "active_jobs": 2,
            "kafka": {"in_group": True, "assigned_partitions": [0, 1]},
            "reasons": [],
        }

        health.ready = False
        health.reasons = ["engine loading", "not in consumer group"]
        r = await client.get("/health")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unhealthy"
        assert body["reasons"] == ["engine loading", "not in consumer group"]
        assert body["model_loaded"] is False
        assert set(body) == {"status", "model_loaded", "gpu_available", "active_jobs", "kafka", "reasons"}

        health.ready, health.reasons = True, []
        assert (await client.get("/health")).status_code == 200


async def test_health_source_that_raises_is_unhealthy_not_500() -> None:
    health = FakeHealth()
    health.fail = True
    async with serving(health, Metrics()) as (_, client):
        r = await client.get("/health")
        assert r.status_code == 503
        assert r.json() == {"status": "unhealthy", "reasons": ["health check failed: RuntimeError"]}


async def test_metrics_exposition() -> None:
    metrics = Metrics()
    metrics.items_graded.labels(status="ok", error_code="").inc()
    metrics.engine_in_flight.set(3)
    async with serving(FakeHealth(), metrics) as (_, client):
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"] == CONTENT_TYPE_LATEST
        assert "texteval_items_graded_total" in r.text
        assert sample(r.text, "texteval_items_graded_total", {"status": "ok", "error_code": ""}) == 1.0
        assert sample(r.text, "texteval_engine_in_flight") == 3.0

        metrics.items_graded.labels(status="ok", error_code="").inc()
        r = await client.get("/metrics")
        assert sample(r.text, "texteval_items_graded_total", {"status": "ok", "error_code": ""}) == 2.0
        # No docs surface.
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/openapi.json")).status_code == 404


async def test_two_apps_do_not_share_counters() -> None:
    metrics_a, metrics_b = Metrics(), Metrics()
    async with serving(FakeHealth(), metrics_a) as (_, a), serving(FakeHealth(), metrics_b) as (_, b):
        metrics_a.jobs_accepted.inc(3)
        text_a = (await a.get("/metrics")).text
        text_b = (await b.get("/metrics")).text
        assert sample(text_a, "texteval_jobs_accepted_total") == 3.0
        assert sample(text_b, "texteval_jobs_accepted_total") == 0.0


async def test_stop_closes_the_port_and_leaves_signals_alone() -> None:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    async with serving(FakeHealth(), Metrics()) as (server, client):
        assert server.port != 0
        assert (await client.get("/health")).status_code == 200
        # Running uvicorn on the main thread must not have replaced the process's handlers.
        assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
        port = server.port
    await server.stop()  # idempotent
    assert server.port == port
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    async with httpx.AsyncClient(timeout=2.0) as fresh:
        with pytest.raises(httpx.ConnectError):
            await fresh.get(f"http://127.0.0.1:{port}/health")


async def test_port_in_use_raises_oserror_not_systemexit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HttpServer(create_app(FakeHealth(), Metrics()), "127.0.0.1", port)
        with pytest.raises(OSError):
            await server.start()
        await server.stop()  # nothing to stop; must not raise
