"""The gateway's refusals as exceptions, and the one place they become answers.

Dependencies and routes raise; ``add_exception_handlers`` (called once, by
``app.create_app``) maps each exception type to its answer. Every answer
keeps FastAPI's shape (``{"detail": ...}``; 422 with field paths) and never
echoes a submitted text: details are fixed sentences, counts and paths.
Exceptions of the modules below the routes (``limits.Refused``,
``submit.BodyTooLarge``/``BodyTooSlow``/``InvalidBody``,
``sse.BadLastEventId``) are mapped here too, so those modules need no web
framework.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from consumer.gateway.limits import Refused
from consumer.gateway.middleware import audit_entry
from consumer.gateway.sse import BadLastEventId
from consumer.gateway.submit import BodyTooLarge, BodyTooSlow, InvalidBody

if TYPE_CHECKING:
    from fastapi import FastAPI

    from consumer.gateway.service import Gateway

JOB_NOT_FOUND = "Job not found"


class GatewayError(Exception):
    """A refusal: ``status`` with ``{"detail": detail}`` (and ``headers``)."""

    status = 500

    def __init__(self, detail: object, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.detail = detail
        self.headers = headers


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    """A missing or wrong key (or stream token)."""

    status = 401

    def __init__(self) -> None:
        super().__init__("missing or invalid API key", {"WWW-Authenticate": "Bearer"})


class Forbidden(GatewayError):
    status = 403


class JobNotFound(GatewayError):
    """Unknown, or another tenant's (never 403: not even its existence is told)."""

    status = 404

    def __init__(self) -> None:
        super().__init__(JOB_NOT_FOUND)


class Conflict(GatewayError):
    status = 409


class PayloadTooLarge(GatewayError):
    status = 413


class UnsupportedMediaType(GatewayError):
    status = 415


class InvalidInput(GatewayError):
    """422 with FastAPI-shaped problems (``loc``, ``msg``, ``type``)."""

    status = 422


class KafkaUnavailable(GatewayError):
    status = 503


def error_response(status: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _gateway_error(request: Request, exc: GatewayError) -> Response:
    return error_response(exc.status, exc.detail, exc.headers)


async def _refused(request: Request, exc: Refused) -> Response:
    gateway: Gateway = request.app.state.gateway
    gateway.metrics.limited.labels(exc.limit).inc()
    audit_entry(request).note = f"limit={exc.limit}"
    return error_response(exc.status, exc.detail, {"Retry-After": str(exc.retry_after_s)})


async def _body_too_large(request: Request, exc: BodyTooLarge) -> Response:
    return error_response(413, str(exc))


async def _body_too_slow(request: Request, exc: BodyTooSlow) -> Response:
    # The rest of the body may still come: the connection is not reused.
    return error_response(408, str(exc), {"Connection": "close"})


async def _invalid_body(request: Request, exc: InvalidBody) -> Response:
    return error_response(422, exc.errors)


async def _bad_last_event_id(request: Request, exc: BadLastEventId) -> Response:
    return error_response(400, str(exc))


_HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[Response]]] = {
    GatewayError: _gateway_error,
    Refused: _refused,
    BodyTooLarge: _body_too_large,
    BodyTooSlow: _body_too_slow,
    InvalidBody: _invalid_body,
    BadLastEventId: _bad_last_event_id,
}


def add_exception_handlers(app: FastAPI) -> None:
    for exc_type, handler in _HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
