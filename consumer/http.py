"""The side HTTP server: ``GET /health`` and ``GET /metrics``.

It runs inside the consumer's own event loop (no thread, no second process),
so the health handler can read consumer state without locks. The consumer
owns the process: its signals, its logging and its shutdown order; uvicorn is
kept from touching any of them (``consumer.uvicorn_compat``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp

from consumer.health import HealthReport, HealthSource
from consumer.metrics import Metrics
from consumer.uvicorn_compat import GuestServer, head_timeout_protocol

logger = logging.getLogger(__name__)


def create_app(health: HealthSource, metrics: Metrics) -> FastAPI:
    # No docs or OpenAPI schema: the surface is two probes, nothing to browse.
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    # Both handlers are ``async def`` on purpose: FastAPI runs plain ``def``
    # handlers in a worker thread, and the health source reads state that
    # only the event loop's thread may touch.
    @app.get("/health")
    async def get_health() -> JSONResponse:
        try:
            report = health.health_report()
        except Exception as exc:  # a probe must answer "unhealthy", never 500
            logger.exception("health report failed")
            report = HealthReport(ready=False, reasons=[f"health check failed: {type(exc).__name__}"])
        status = "healthy" if report.ready else "unhealthy"
        # "status" first, then the source's fields; ours win over any same-named ones.
        payload: dict[str, object] = {"status": status, **report.body}
        payload["status"] = status
        payload["reasons"] = list(report.reasons)
        return JSONResponse(jsonable_encoder(payload), status_code=200 if report.ready else 503)

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class HttpServer:
    """Serves an ASGI app from a background task in the caller's event loop."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        shutdown_timeout: int = 5,
        forwarded_allow_ips: str = "",
        head_timeout_s: float = 30.0,
    ) -> None:
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="on",  # the app's lifespan owns its clients (the gateway's Kafka producer and readers)
            # uvicorn trusts X-Forwarded-For from loopback by default: behind a sidecar anyone
            # could then say which address they are. Only the proxies named here are believed.
            proxy_headers=bool(forwarded_allow_ips),
            forwarded_allow_ips=forwarded_allow_ips or None,
            log_config=None,  # the consumer configures logging; uvicorn must not dictConfig over it
            access_log=False,  # probes every few seconds would drown the log
            http=head_timeout_protocol(head_timeout_s),  # h11, with a deadline for each request's head
            ws="none",  # no websockets, and no import of the websockets package
            timeout_graceful_shutdown=shutdown_timeout,  # whole seconds, as uvicorn types it
        )
        self._shutdown_timeout = shutdown_timeout
        self._server: GuestServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the real one when asked for port 0), else the configured one."""
        return self._bound_port if self._bound_port is not None else self._config.port

    async def start(self) -> None:
        """Returns once the socket is listening; raises (e.g. OSError) if it cannot."""
        if self._task is not None:
            raise RuntimeError("HttpServer already started")
        server = self._server = GuestServer(self._config)
        self._task = asyncio.create_task(server.serve(), name="http-server")
        listening = asyncio.create_task(server.listening.wait())
        try:
            await asyncio.wait({self._task, listening}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            listening.cancel()
        if not server.listening.is_set():
            task, self._task, self._server = self._task, None, None
            task.result()  # raises what stopped it
            raise RuntimeError("HTTP server exited before listening")
        # Read now: a closed asyncio server no longer lists its sockets. With
        # port 0 and a host that resolves to several addresses, each socket
        # gets its own ephemeral port; the first one is reported.
        self._bound_port = int(server.servers[0].sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stops accepting, lets in-flight requests finish (bounded), closes the socket. Idempotent."""
        task, server = self._task, self._server
        if task is None or server is None:
            return
        self._task = None
        server.should_exit = True  # polled by uvicorn's main loop every 0.1 s
        try:
            # uvicorn bounds its own drain by timeout_graceful_shutdown; this is the backstop.
            async with asyncio.timeout(self._shutdown_timeout + 2.0):
                await asyncio.shield(task)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:
            logger.exception("HTTP server failed while stopping")
