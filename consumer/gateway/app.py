"""The gateway's HTTP routes (contract 1.1, "HTTP gateway").

Handlers are ``async def``: the store and the tail live in the event loop's
thread. Errors follow FastAPI's shape (``{"detail": ...}``, 422 with field
paths) and never echo a submitted text; ``/stream`` for an unknown job
answers the prototype's ``data: {"error": "Job not found"}``.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumer.erasure import erase_answer
from consumer.gateway.auth import Caller, is_loopback, loggable_id
from consumer.gateway.corrections import AppliedGrades, corrections_router
from consumer.gateway.exports import export
from consumer.gateway.jobs import JobRecord, JobState, status_body
from consumer.gateway.limits import Refused, tenant_load
from consumer.gateway.metrics import GatewayMetrics
from consumer.gateway.page import page_headers, page_html
from consumer.gateway.results import ResultsFile, results_file, results_problem
from consumer.gateway.service import Gateway
from consumer.gateway.sse import (
    BadLastEventId,
    GuardedEventSource,
    job_stream,
    not_found_stream,
    parse_last_event_id,
)
from consumer.gateway.submit import (
    NOT_JSON,
    BodyTooLarge,
    BodyTooSlow,
    InvalidBody,
    Submission,
    is_json,
    parse_submission,
    read_limited,
)

logger = logging.getLogger(__name__)
# The audit trail (one line per gateway action); route it apart with this logger's name.
audit_log = logging.getLogger("consumer.gateway.audit")

# On a results file of an `incomplete` job: how many of its results this gateway does not hold.
MISSING_HEADER = "Texteval-Missing-Results"


def _error(status: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="texteval gateway", docs_url=None, redoc_url=None, openapi_url=None)
    settings = gateway.settings
    applied = AppliedGrades()  # the corrections applied through this gateway: the route writes, the files read
    origins = [o.strip() for o in settings.gateway_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_middleware(_RequestMetrics, metrics=gateway.metrics)
    app.add_middleware(_NoStore)
    if not gateway.keys.required and not settings.gateway_allow_anonymous:
        app.add_middleware(_LoopbackHostOnly)  # outermost: nothing else runs for another Host

    class Unauthorized(Exception):
        pass

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        audit(None, request.scope.get("route"), request.path_params.get("job_id"), 401)
        return _error(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        gateway.metrics.limited.labels(exc.limit).inc()
        audit(None, request.scope.get("route"), request.path_params.get("job_id"), exc.status, f"limit={exc.limit}")
        return _error(exc.status, exc.detail, {"Retry-After": str(exc.retry_after_s)})

    def peer(request: Request) -> str:
        return request.client.host if request.client is not None else "unknown"

    def failed(request: Request) -> Exception:
        """A missing or wrong key (or stream token): 401, or 429 once this address has sent too many.

        Only failures are counted, and only after the key was checked: a valid key is never
        refused for what others sent from its address (behind a NAT or an ingress every school
        shares one). The address is the TCP peer's, or the proxy's ``X-Forwarded-For`` only when
        ``GATEWAY_FORWARDED_ALLOW_IPS`` names that proxy (consumer/http.py)."""
        try:
            gateway.auth_failures.take(peer(request), "requests with a wrong key from this address", "auth_failures")
        except Refused as exc:
            return exc
        return Unauthorized()

    async def caller_of(
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        access_token: Annotated[str | None, Query()] = None,
    ) -> Caller:
        """Who is calling (401 for nobody): a tenant, an operator, or anyone on an open gateway."""
        caller = gateway.keys.identify(authorization, access_token)
        if caller is None:
            raise failed(request)
        request.state.caller = caller
        return caller

    async def reader_of(
        request: Request,
        job_id: str,
        token: Annotated[str | None, Query()] = None,
        authorization: Annotated[str | None, Header()] = None,
        access_token: Annotated[str | None, Query()] = None,
    ) -> Caller:
        """As ``caller_of``, or a stream token for this very job (browsers' URLs)."""
        if token is None or not gateway.keys.required:
            return await caller_of(request, authorization, access_token)
        caller = gateway.tokens.verify(token, job_id, _now_s())
        if caller is None:
            raise failed(request)
        request.state.caller = caller
        return caller

    # As decorator dependencies (the handlers read ``request.state.caller``):
    # the routes are closures, so annotations naming local dependencies
    # could not be resolved.
    by_key = [Depends(caller_of)]
    by_key_or_token = [Depends(reader_of)]

    def who(request: Request) -> Caller:
        caller: Caller = request.state.caller
        return caller

    def audit(caller: Caller | None, route: object, job_id: str | None, status: int, note: str = "") -> None:
        """One line per action: who (tenant, key id), what, which job, the answer. Never a key, never a text."""
        methods = sorted(getattr(route, "methods", None) or ["?"])
        action = f"{methods[0]}_{getattr(route, 'path', 'unmatched')}"
        audit_log.info(
            "tenant=%s key=%s action=%s job=%s status=%d%s",
            "-" if caller is None else (caller.tenant or ("admin" if caller.admin else "open")),
            "-" if caller is None else caller.key_id,
            action,
            "-" if job_id is None else loggable_id(job_id),
            status,
            f" {note}" if note else "",
        )

    def done(request: Request, caller: Caller, job_id: str | None, response: Response, note: str = "") -> Response:
        audit(caller, request.scope.get("route"), job_id, response.status_code, note)
        return response

    async def find(job_id: str) -> JobRecord | None:
        """A job not met yet may be in what the tail has not read: at start-up
        (the replay), or produced a moment ago (by a consumer, another
        gateway's client, or straight to Kafka). Read up to now, then decide."""
        record = gateway.store.get(job_id)
        if record is None and not gateway.tail.caught_up.is_set():
            await gateway.wait_caught_up()
            record = gateway.store.get(job_id)
        if record is None and gateway.tail.caught_up.is_set() and await gateway.tail.read_to_now():
            record = gateway.store.get(job_id)
        return record

    async def find_for(caller: Caller, job_id: str) -> JobRecord | None:
        """Another tenant's job is an unknown one (404, never 403): decided
        from the id alone, before any lookup, so not even the time taken
        tells whether it exists."""
        if not caller.sees(job_id):
            return None
        return await find(job_id)

    def limit_writes(caller: Caller) -> None:
        if not caller.open:
            gateway.writes.take(caller.limit_key, "writes for this school", "writes")

    def accepted(record: JobRecord, caller: Caller) -> JSONResponse:
        body = _accepted(record, gateway)
        if not caller.open:
            body["stream_token"] = gateway.tokens.issue(record.job_id, caller, _now_s())
            body["stream_token_expires_in_s"] = int(gateway.tokens.ttl_s)
        return JSONResponse(body)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = page_html()
        return HTMLResponse(html, headers=page_headers(html))

    @app.post("/evaluate", dependencies=by_key)
    async def evaluate(request: Request) -> Response:
        caller = who(request)
        limit_writes(caller)
        if not is_json(request.headers.get("content-type")):
            return done(request, caller, None, _error(415, NOT_JSON))
        lease = gateway.bodies.lease()  # held until the request is produced: the parsed body is memory too
        try:
            body = await read_limited(
                request.stream(), request.headers.get("content-length"), settings.gateway_max_body_bytes, lease,
                settings.gateway_request_read_timeout_s,
            )  # fmt: skip
            submission = parse_submission(body, max_items=settings.max_items_per_job, tenant=caller.tenant)
            del body
            return await submit(request, caller, submission)
        except BodyTooLarge as exc:
            return done(request, caller, None, _error(413, str(exc)))
        except BodyTooSlow as exc:
            return done(request, caller, None, _error(408, str(exc), {"Connection": "close"}))
        except InvalidBody as exc:
            return done(request, caller, None, _error(422, exc.errors))
        finally:
            lease.release()

    async def submit(request: Request, caller: Caller, submission: Submission) -> Response:
        if gateway.store.is_erased(submission.job_id):  # the consumers would not grade it (CANCEL_TTL_S)
            return done(request, caller, submission.job_id, _error(409, "job_id was erased; send a new job_id"))
        existing = await find_for(caller, submission.job_id) if submission.named else None
        if existing is not None:
            if existing.request_sha256 != submission.request_sha256:
                return done(request, caller, submission.job_id, _error(409, "job_id already used by another request"))
            return done(request, caller, submission.job_id, accepted(existing, caller))
        if submission.named and gateway.known is not None and submission.job_id in gateway.known:
            # This gateway forgot the job; the consumers did not: it would never be graded.
            detail = "job_id already used by an earlier job the consumers still remember; send a new job_id"
            return done(request, caller, submission.job_id, _error(409, detail))
        if caller.tenant is not None:
            check_quota(gateway, caller.tenant, submission.total_items)
        record = gateway.store.submitted(submission.job_id, submission.total_items, submission.request_sha256, _now_s())
        try:
            await gateway.produce_request(submission)
        except Exception as exc:  # noqa: BLE001 - any produce failure: nothing was queued
            gateway.store.forget(submission.job_id)
            too_large = type(exc).__name__ == "MessageSizeTooLargeError"
            logger.warning("could not produce job %s: %s", submission.job_id, type(exc).__name__)
            if too_large:
                return done(
                    request, caller, submission.job_id, _error(413, "request larger than the Kafka message limit")
                )
            return done(request, caller, submission.job_id,
                        _error(503, "Kafka unavailable; nothing was queued, retry later"))  # fmt: skip
        logger.info("job %s queued: %d items", submission.job_id, submission.total_items)
        return done(request, caller, submission.job_id, accepted(record, caller))

    @app.get("/stream/{job_id:path}", dependencies=by_key_or_token)
    async def stream(
        request: Request,
        job_id: str,
        last_event_id: Annotated[str | None, Header()] = None,
        last_event_id_query: Annotated[str | None, Query(alias="last_event_id")] = None,
    ) -> Response:
        caller = who(request)
        try:
            after = parse_last_event_id(last_event_id if last_event_id is not None else last_event_id_query)
        except BadLastEventId as exc:
            return done(request, caller, job_id, _error(400, str(exc)))
        slot = gateway.slots.acquire(None if caller.open else caller.limit_key)
        try:
            record = await find_for(caller, job_id)
        except BaseException:
            slot.release()
            raise
        content = not_found_stream() if record is None else job_stream(record, gateway.store, gateway.metrics, after)
        if record is None:  # the prototype's answer is a 200 stream; the audit says what it was
            audit(caller, request.scope.get("route"), job_id, 404)
        response = GuardedEventSource(
            content, stall_timeout_s=settings.gateway_send_timeout_s, ping_s=settings.gateway_heartbeat_s,
            on_close=slot.release, on_stalled=gateway.metrics.streams_stalled.inc,
        )  # fmt: skip
        return response if record is None else done(request, caller, job_id, response)

    @app.get("/jobs", dependencies=by_key)
    async def list_jobs(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[str | None, Query(max_length=128)] = None,
    ) -> Response:
        """The caller's jobs (an operator's or an open gateway's: all), by job id,
        a page at a time: ``next`` is the ``after`` of the next page."""
        caller = who(request)
        mine = sorted((r for r in gateway.store.all_jobs() if caller.sees(r.job_id)), key=lambda r: r.job_id)
        if after is not None:
            mine = [r for r in mine if r.job_id > after]
        page = mine[:limit]
        more = len(mine) > limit
        body = {"jobs": [status_body(r) for r in page], "next": page[-1].job_id if more else None}
        return done(request, caller, None, JSONResponse(body))

    @app.get("/jobs/{job_id:path}/results", dependencies=by_key_or_token)
    async def results(
        request: Request, job_id: str, format: str = "csv", lang: str = "ca", layout: str = "machine"
    ) -> Response:
        """``format=xlsx`` or ``layout=gradebook``: the teachers' file (the model's grade and
        feedback, the teacher's correction, the final grade; in ``lang``); otherwise the
        prototype's machine-readable columns."""
        caller = who(request)
        problem = results_problem(format, lang, layout)
        if problem is not None:
            return done(request, caller, job_id, _error(422, [problem]))
        record = await find_for(caller, job_id)
        if record is None:
            return done(request, caller, job_id, _error(404, "Job not found"))
        missing = record.missing_results if record.state is JobState.INCOMPLETE else 0
        rows = gateway.rows.rows(record)
        if format == "xlsx" or layout == "gradebook":
            body, media, name = export(job_id, rows, applied.of(record), format, lang=lang)
            file = ResultsFile(body, media, name.replace("-", ".incomplete-", 1) if missing else name)
        else:
            file = results_file(job_id, rows, format, missing=missing)
        headers = {"Content-Disposition": f'attachment; filename="{file.filename}"'}
        if missing:
            headers[MISSING_HEADER] = str(missing)
        return done(request, caller, job_id, Response(file.text, media_type=file.media_type, headers=headers))

    @app.post("/jobs/{job_id:path}/stream_token", dependencies=by_key)
    async def stream_token(request: Request, job_id: str) -> Response:
        """A fresh stream token (the page's, when the one it had expired)."""
        caller = who(request)
        record = await find_for(caller, job_id)
        if record is None:
            return done(request, caller, job_id, _error(404, "Job not found"))
        if caller.open:
            return done(request, caller, job_id, JSONResponse({"stream_token": None}))
        body = {"stream_token": gateway.tokens.issue(job_id, caller, _now_s()),
                "stream_token_expires_in_s": int(gateway.tokens.ttl_s)}  # fmt: skip
        return done(request, caller, job_id, JSONResponse(body))

    @app.get("/jobs/{job_id:path}", dependencies=by_key_or_token)
    async def job_status(request: Request, job_id: str) -> Response:
        caller = who(request)
        record = await find_for(caller, job_id)
        if record is None:
            return done(request, caller, job_id, _error(404, "Job not found"))
        return done(request, caller, job_id, JSONResponse(status_body(record)))

    @app.delete("/jobs/{job_id:path}", dependencies=by_key)
    async def cancel(request: Request, job_id: str, erase: bool = False) -> Response:
        caller = who(request)
        limit_writes(caller)
        if erase:
            return await erase_job(request, caller, job_id)
        record = await find_for(caller, job_id)
        if record is None:
            return done(request, caller, job_id, _error(404, "Job not found"))
        if record.finished:
            return done(request, caller, job_id, _error(409, f"job already {record.state.value}"))
        try:
            await gateway.produce_cancel(job_id, caller)
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not produce the cancel of job %s: %s", job_id, type(exc).__name__)
            return done(request, caller, job_id, _error(503, "Kafka unavailable; retry later"))
        logger.info("cancel requested for job %s", job_id)
        answer = JSONResponse({"job_id": job_id, "status": "cancel_requested"}, status_code=202)
        return done(request, caller, job_id, answer)

    async def erase_job(request: Request, caller: Caller, job_id: str) -> Response:
        """``?erase=true`` (contract 1.2): the owner's or an operator's, finished or not, and also
        when this gateway no longer holds the job (its data may still be in the job state and the
        topics). Another tenant's job is unknown, as on every route. The audit line says erase."""

        def erased(response: Response) -> Response:
            return done(request, caller, job_id, response, "erase=true")

        if not caller.sees(job_id):
            return erased(_error(404, "Job not found"))
        try:
            await gateway.produce_erase(job_id, caller)
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not produce the erase of job %s: %s", job_id, type(exc).__name__)
            return erased(_error(503, "Kafka unavailable; nothing was erased, retry later"))
        logger.info("erase requested for job %s", job_id)
        return erased(JSONResponse(erase_answer(settings, job_id, _now_s()), status_code=202))

    @app.get("/health")
    async def health(authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
        """Cheap (no per-job work: counters only). The counts (jobs, bytes, streams: every school's
        activity) only for an operator's key or on an open gateway; a probe without a key gets
        the status and its reasons. A wrong key here is not counted as a failed login."""
        ready, body = gateway.health()
        caller = gateway.keys.identify(authorization)
        if caller is None or not (caller.admin or caller.open):
            body = {k: body[k] for k in ("status", "reasons", "auth")}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(corrections_router(gateway, caller_of, find_for, limit_writes, done, applied))  # contract 1.2
    return app


def check_quota(gateway: Gateway, tenant: str, new_items: int) -> None:
    """Per-tenant quotas (429 + Retry-After): one school cannot fill the queue."""
    s = gateway.settings
    load = tenant_load(gateway.store, tenant)
    if load.open_jobs >= s.gateway_tenant_max_open_jobs:
        raise Refused(f"{load.open_jobs} jobs of this tenant are not finished yet (limit "
                      f"{s.gateway_tenant_max_open_jobs}); retry when one is", 30, "tenant_open_jobs")  # fmt: skip
    excess = load.waiting_items + new_items - s.gateway_tenant_max_waiting_items
    if excess > 0:
        retry_s = min(600.0, max(1.0, excess * gateway.store.seconds_per_item))
        detail = f"{load.waiting_items} items of this tenant are waiting (limit {s.gateway_tenant_max_waiting_items})"
        raise Refused(f"{detail}; retry later", retry_s, "tenant_waiting_items")


def _accepted(record: JobRecord, gateway: Gateway) -> dict[str, object]:
    """The prototype's answer to POST /evaluate."""
    return {
        "job_id": record.job_id,
        "total_items": record.total_items,
        "estimated_time_seconds": round(record.total_items * gateway.store.seconds_per_item, 1),
        "status": JobState.QUEUED.value if record.state is JobState.QUEUED else record.state.value,
        "stream_url": f"/stream/{record.job_id}",
    }


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


class _NoStore:
    """``Cache-Control: no-store`` on every answer but the page's (grades,
    statuses and errors must not stay in a browser's or a proxy's cache), and
    ``nosniff`` on all of them."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        is_page = scope["path"] == "/"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                replaced = {b"x-content-type-options"} if is_page else {b"x-content-type-options", b"cache-control"}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in replaced]
                if not is_page:
                    headers.append((b"cache-control", b"no-store"))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, with_headers)


class _LoopbackHostOnly:
    """An open gateway (no keys, loopback only) answers only requests addressed to a loopback
    name: a web page on another site that rebinds its own DNS name to 127.0.0.1 (DNS
    rebinding) sends ``Host: <its name>`` and gets 421, never a job or a result."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_loopback(_host_name(scope)):
            body = b'{"detail":"this open gateway answers only requests to localhost"}'
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 421, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self._app(scope, receive, send)


def _host_name(scope: Scope) -> str:
    """The Host header's name without the port (``[::1]:8080`` → ``::1``); empty when absent."""
    host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
