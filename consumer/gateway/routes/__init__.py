"""The gateway's routes, one router per concern (FastAPI's "Bigger Applications" layout).

``ROUTERS`` is the order ``app.create_app`` includes them in: a route whose
path ends in ``{job_id:path}`` matches every longer path under it, so
``results`` and ``corrections`` come before ``jobs``.
"""

from __future__ import annotations

from fastapi import APIRouter

from consumer.gateway.routes import corrections, evaluate, health, jobs, page, results, stream

ROUTERS: tuple[APIRouter, ...] = (
    page.router,
    evaluate.router,
    stream.router,
    results.router,
    corrections.router,
    jobs.router,
    health.router,
)
