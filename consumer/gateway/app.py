"""The gateway's FastAPI app (contract 1.1, "HTTP gateway"): where its parts meet.

- Routes: one router per concern in ``consumer/gateway/routes/`` (the page,
  ``/evaluate``, ``/stream``, results, corrections, jobs, the probes).
- Dependencies: ``deps.py`` (the gateway, the caller, the job, the limits).
- Refusals: raised as exceptions, mapped to answers in ``errors.py``.
- Middlewares (pure ASGI, ``middleware.py``): the loopback-Host check of an
  open gateway, the audit trail, no-store headers, request counts, CORS.
- Lifespan: ``GatewayLifespan`` runs the gateway (its Kafka producer, the
  progress tail and the topic followers: ``service.gateway_running``) for as
  long as the server serves, and puts it in ``app.state.gateway``.

Handlers are ``async def``: the store and the tail live in the event loop's
thread (FastAPI runs plain ``def`` handlers in a worker thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from consumer.gateway.auth import ApiKeys, keys_from
from consumer.gateway.errors import add_exception_handlers
from consumer.gateway.metrics import GatewayMetrics
from consumer.gateway.middleware import AuditTrail, LoopbackHostOnly, NoStore, RequestMetrics
from consumer.gateway.routes import ROUTERS
from consumer.gateway.service import Gateway, gateway_running
from consumer.settings import Settings


class GatewayLifespan:
    """The app's lifespan: the gateway started before the first request, stopped after the last.

    ``error`` keeps what stopped the start (uvicorn only logs it and exits), so
    whoever started the server can raise it; ``stopped`` is set once the Kafka
    clients are closed."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics, keys: ApiKeys) -> None:
        self._settings, self._metrics, self._keys = settings, metrics, keys
        self.error: Exception | None = None
        self.stopped = asyncio.Event()

    @asynccontextmanager
    async def __call__(self, app: FastAPI) -> AsyncIterator[None]:
        started = False
        try:
            async with gateway_running(self._settings, self._metrics, self._keys) as gateway:
                app.state.gateway = gateway
                started = True
                yield
        except Exception as exc:
            if not started:
                self.error = exc
            raise
        finally:
            self.stopped.set()


def create_app(settings: Settings, metrics: GatewayMetrics | None = None, *, gateway: Gateway | None = None) -> FastAPI:
    """The gateway's app. Served (its lifespan run), it starts its own gateway; with ``gateway``
    (built elsewhere: the unit tests' doubles) it serves that one and its lifespan starts nothing."""
    keys = gateway.keys if gateway is not None else keys_from(settings)  # refused settings fail here, at once
    metrics = gateway.metrics if gateway is not None else metrics or GatewayMetrics()
    lifespan = None if gateway is not None else GatewayLifespan(settings, metrics, keys)
    app = FastAPI(title="texteval gateway", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.lifespan = lifespan
    if gateway is not None:
        app.state.gateway = gateway
    for router in ROUTERS:
        app.include_router(router)
    add_exception_handlers(app)
    origins = [o.strip() for o in settings.gateway.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(NoStore)
    app.add_middleware(AuditTrail)
    if not keys.required and not settings.gateway.allow_anonymous:
        app.add_middleware(LoopbackHostOnly)  # outermost: nothing else runs for another Host
    return app
