"""The gateway's HTTP routes (contract 1.1, "HTTP gateway").

Handlers are ``async def``: the store and the tail live in the event loop's
thread. Errors follow FastAPI's shape (``{"detail": ...}``, 422 with field
paths) and never echo a submitted text; ``/stream`` for an unknown job
answers the prototype's ``data: {"error": "Job not found"}``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumer.gateway.jobs import JobRecord, JobState, results_rows, status_body
from consumer.gateway.metrics import GatewayMetrics
from consumer.gateway.page import page_html
from consumer.gateway.service import Gateway
from consumer.gateway.sse import BadLastEventId, job_stream, not_found_stream, parse_last_event_id
from consumer.gateway.submit import BodyTooLarge, InvalidBody, parse_submission, read_limited

logger = logging.getLogger(__name__)

RESULT_COLUMNS = ("job_id", "item_index", "id_alumno", "status", "nota", "feedback")


def _error(status: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="texteval gateway", docs_url=None, redoc_url=None, openapi_url=None)
    settings = gateway.settings
    origins = [o.strip() for o in settings.gateway_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_middleware(_RequestMetrics, metrics=gateway.metrics)

    class Unauthorized(Exception):
        pass

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return _error(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})

    async def require_key(
        authorization: Annotated[str | None, Header()] = None,
        access_token: Annotated[str | None, Query()] = None,
    ) -> None:
        if not gateway.keys.allows(authorization, access_token):
            raise Unauthorized()

    authorized = [Depends(require_key)]

    async def find(job_id: str) -> JobRecord | None:
        record = gateway.store.get(job_id)
        if record is None and not gateway.tail.caught_up.is_set() and await gateway.wait_caught_up():
            record = gateway.store.get(job_id)
        return record

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html())

    @app.post("/evaluate", dependencies=authorized)
    async def evaluate(request: Request) -> Response:
        try:
            body = await read_limited(
                request.stream(), request.headers.get("content-length"), settings.gateway_max_body_bytes
            )
            submission = parse_submission(body, max_items=settings.max_items_per_job)
        except BodyTooLarge as exc:
            return _error(413, str(exc))
        except InvalidBody as exc:
            return _error(422, exc.errors)
        existing = await find(submission.job_id)
        if existing is not None:
            if existing.request_sha256 != submission.request_sha256:
                return _error(409, "job_id already used by another request")
            return JSONResponse(_accepted(existing, gateway))
        record = gateway.store.submitted(submission.job_id, submission.total_items, submission.request_sha256, _now_s())
        try:
            await gateway.produce_request(submission)
        except Exception as exc:  # noqa: BLE001 - any produce failure: nothing was queued
            gateway.store.forget(submission.job_id)
            too_large = type(exc).__name__ == "MessageSizeTooLargeError"
            logger.warning("could not produce job %s: %s", submission.job_id, type(exc).__name__)
            if too_large:
                return _error(413, "request larger than the Kafka message limit")
            return _error(503, "Kafka unavailable; nothing was queued, retry later")
        logger.info("job %s queued: %d items", submission.job_id, submission.total_items)
        return JSONResponse(_accepted(record, gateway))

    @app.get("/stream/{job_id:path}", dependencies=authorized)
    async def stream(
        job_id: str,
        last_event_id: Annotated[str | None, Header()] = None,
        last_event_id_query: Annotated[str | None, Query(alias="last_event_id")] = None,
    ) -> Response:
        try:
            after = parse_last_event_id(last_event_id if last_event_id is not None else last_event_id_query)
        except BadLastEventId as exc:
            return _error(400, str(exc))
        record = await find(job_id)
        options: dict[str, Any] = {
            "ping": settings.gateway_heartbeat_s,
            "send_timeout": settings.gateway_send_timeout_s,
        }
        if record is None:
            return EventSourceResponse(not_found_stream(), **options)
        return EventSourceResponse(job_stream(record, gateway.store, gateway.metrics, after), **options)

    @app.get("/jobs/{job_id:path}/results", dependencies=authorized)
    async def results(job_id: str, format: str = "csv") -> Response:
        if format not in ("csv", "jsonl"):
            return _error(422, [{"loc": ["query", "format"], "msg": "use csv or jsonl", "type": "enum"}])
        record = await find(job_id)
        if record is None:
            return _error(404, "Job not found")
        rows = results_rows(record)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)
        headers = {"Content-Disposition": f'attachment; filename="{name}.{format}"'}
        if format == "jsonl":
            text = "".join(_json_line(row) for row in rows)
            return Response(text, media_type="application/x-ndjson", headers=headers)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)

    @app.get("/jobs/{job_id:path}", dependencies=authorized)
    async def job_status(job_id: str) -> Response:
        record = await find(job_id)
        if record is None:
            return _error(404, "Job not found")
        return JSONResponse(status_body(record))

    @app.delete("/jobs/{job_id:path}", dependencies=authorized)
    async def cancel(job_id: str) -> Response:
        record = await find(job_id)
        if record is None:
            return _error(404, "Job not found")
        if record.finished:
            return _error(409, f"job already {record.state.value}")
        try:
            await gateway.produce_cancel(job_id)
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not produce the cancel of job %s: %s", job_id, type(exc).__name__)
            return _error(503, "Kafka unavailable; retry later")
        logger.info("cancel requested for job %s", job_id)
        return JSONResponse({"job_id": job_id, "status": "cancel_requested"}, status_code=202)

    @app.get("/health")
    async def health() -> JSONResponse:
        ready, body = gateway.health()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _accepted(record: JobRecord, gateway: Gateway) -> dict[str, object]:
    """The prototype's answer to POST /evaluate."""
    return {
        "job_id": record.job_id,
        "total_items": record.total_items,
        "estimated_time_seconds": round(record.total_items * gateway.store.seconds_per_item, 1),
        "status": JobState.QUEUED.value if record.state is JobState.QUEUED else record.state.value,
        "stream_url": f"/stream/{record.job_id}",
    }


def _json_line(row: dict[str, object]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def _now_s() -> float:
    return time.time()


class _RequestMetrics:
    """Counts requests by route template (never the path: job ids are unbounded)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                template = getattr(route, "path", "unmatched")
                self._metrics.requests.labels(scope["method"], template, str(message["status"])).inc()
            await send(message)

        await self._app(scope, receive, counting_send)
