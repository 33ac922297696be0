"""``GET /health`` and ``GET /metrics``: the probes. Neither takes a key, neither is audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.gateway.deps import GatewayDep

router = APIRouter()


@router.get("/health")
async def health(gateway: GatewayDep, authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
    """Cheap (no per-job work: counters only). The counts (jobs, bytes, streams: every school's
    activity) only for an operator's key or on an open gateway; a probe without a key gets
    the status and its reasons. A wrong key here is not counted as a failed login."""
    ready, body = gateway.health()
    caller = gateway.keys.identify(authorization)
    if caller is None or not (caller.admin or caller.open):
        body = {k: body[k] for k in ("status", "reasons", "auth")}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(gateway: GatewayDep) -> Response:
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
