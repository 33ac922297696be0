"""The gateway's pure-ASGI middlewares (what Starlette recommends: no body
buffering, streams pass through untouched), outermost first as ``create_app``
adds them: the loopback-Host check of an open gateway, the audit trail,
``no-store``/``nosniff`` headers, request counts.

The audit trail writes one line per gateway action from here, once the
answer's status is known: who (tenant, key id), what (method and route
template), which job, the status, and a note. The routes and dependencies
only fill in the request's ``AuditEntry`` (who called, the job a body
named, an erase, a limit). Only routes that take a key are audited (the
key dependency marks the entry): the page, ``/health`` and ``/metrics``
are not actions, and a path that matches no route leaves no line (so
nothing from a raw path reaches the log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumer.gateway.auth import Caller, is_loopback, loggable_id

if TYPE_CHECKING:
    from consumer.gateway.metrics import GatewayMetrics

# The audit trail (one line per gateway action); route it apart with this logger's name.
audit_log = logging.getLogger("consumer.gateway.audit")

_AUDIT_KEY = "audit"  # in the request's state (scope["state"])


@dataclass
class AuditEntry:
    """What the line of one request says besides its route and status."""

    active: bool = False  # set by the key dependency: an action to audit
    caller: Caller | None = None  # None: no valid key
    job_id: str | None = None  # else the path's job_id, if any
    status: int | None = None  # else the answer's (the not-found stream answers 200, says 404)
    note: str = ""


def audit_entry(connection: HTTPConnection) -> AuditEntry:
    """This request's entry (an unused one outside the ``AuditTrail``)."""
    state = connection.scope.setdefault("state", {})
    entry = state.get(_AUDIT_KEY)
    if not isinstance(entry, AuditEntry):
        entry = state[_AUDIT_KEY] = AuditEntry()
    return entry


def audit_line(entry: AuditEntry, scope: Scope, status: int) -> str | None:
    """The line for a finished request, or None when it is not audited."""
    route = scope.get("route")
    if not entry.active or route is None:
        return None
    methods = sorted(getattr(route, "methods", None) or ["?"])
    job_id = entry.job_id if entry.job_id is not None else scope.get("path_params", {}).get("job_id")
    caller = entry.caller
    return "tenant=%s key=%s action=%s job=%s status=%d%s" % (  # noqa: UP031 - one format for every field
        "-" if caller is None else (caller.tenant or ("admin" if caller.admin else "open")),
        "-" if caller is None else caller.key_id,
        f"{methods[0]}_{getattr(route, 'path', 'unmatched')}",
        "-" if job_id is None else loggable_id(job_id),
        entry.status if entry.status is not None else status,
        f" {entry.note}" if entry.note else "",
    )


class AuditTrail:
    """One audit line per action, whatever answered it (a route, an exception handler, a 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        entry = audit_entry(HTTPConnection(scope))
        written = False

        def write(status: int) -> None:
            nonlocal written
            line = None if written else audit_line(entry, scope, status)
            written = True
            if line is not None:
                audit_log.info(line)

        async def auditing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                write(int(message["status"]))
            await send(message)

        try:
            await self._app(scope, receive, auditing_send)
        except Exception:
            write(500)  # unless an answer had started: the server's error page answers
            raise


class RequestMetrics:
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


class NoStore:
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


class LoopbackHostOnly:
    """An open gateway (no keys, loopback only) answers only requests addressed to a loopback
    name: a web page on another site that rebinds its own DNS name to 127.0.0.1 (DNS
    rebinding) sends ``Host: <its name>`` and gets 421, never a job or a result."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_loopback(host_name(scope)):
            body = b'{"detail":"this open gateway answers only requests to localhost"}'
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 421, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self._app(scope, receive, send)


def host_name(scope: Scope) -> str:
    """The Host header's name without the port (``[::1]:8080`` → ``::1``); empty when absent."""
    host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
