"""Serving the gateway: its app (``app.py``) on a uvicorn server, which runs
the app's lifespan (the gateway's Kafka clients and readers) around serving.

Apart from ``service.py`` because the routes need the ``Gateway`` type and
serving needs the routes: one direction each.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from consumer.gateway.app import GatewayLifespan, create_app
from consumer.gateway.auth import GatewaySetupError, check_exposure, keys_from
from consumer.gateway.metrics import GatewayMetrics
from consumer.gateway.service import Gateway
from consumer.http import HttpServer
from consumer.kafka import KafkaSetupError, check_connection
from consumer.settings import Settings

logger = logging.getLogger(__name__)


@asynccontextmanager
async def gateway_serving(
    settings: Settings, host: str = "127.0.0.1", port: int = 0, metrics: GatewayMetrics | None = None
) -> AsyncIterator[tuple[Gateway, str]]:
    """A started gateway and its HTTP server: (gateway, base URL). The server runs the app's
    lifespan, which starts the gateway before the socket listens (a start that fails raises
    here, as it was raised) and stops it after the last request. On exit the open streams
    end first, so the server stops without waiting on them."""
    app = create_app(settings, metrics)
    lifespan: GatewayLifespan = app.state.lifespan
    http = HttpServer(
        app, host, port, forwarded_allow_ips=settings.gateway.forwarded_allow_ips,
        head_timeout_s=settings.gateway.request_read_timeout_s,
    )  # fmt: skip
    try:
        await http.start()
    except RuntimeError:
        if lifespan.error is not None:
            raise lifespan.error from None
        raise
    gateway: Gateway = app.state.gateway
    try:
        yield gateway, f"http://{host}:{http.port}"
    finally:
        gateway.store.close()
        await http.stop()
        # HttpServer.stop may return before the lifespan has closed the Kafka clients (its
        # backstop ends the server's task, not the lifespan's): the caller gets them closed.
        try:
            async with asyncio.timeout(4 * settings.kafka.close_timeout_s):
                await lifespan.stopped.wait()
        except TimeoutError:
            logger.warning("the gateway's Kafka clients did not close in time")


async def serve_gateway(settings: Settings, host: str, port: int) -> int:
    """``texteval gateway``: until SIGTERM/SIGINT. Exit 2 on settings it cannot use."""
    try:
        keys = keys_from(settings)
        check_exposure(host, keys, settings.gateway.allow_anonymous)
        await check_connection(settings)
    except (GatewaySetupError, KafkaSetupError) as exc:
        logger.error("gateway not started: %s", exc)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        async with gateway_serving(settings, host, port) as (_, url):
            logger.info("gateway on %s/ (%s) in %.1f s", url,
                        "API keys required" if keys.required else "open", time.monotonic() - started)  # fmt: skip
            await stop.wait()
            logger.info("signal received: closing streams and stopping")
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
