"""``POST /evaluate`` bodies: size limit, the intake's validation, idempotency.

The body is read in chunks and refused (413) as soon as it passes
``GATEWAY_MAX_BODY_BYTES``, before any of it is parsed. It is validated
with the contract's own ``EvaluationRequest`` (the limits the consumer's
intake applies, ``MAX_ITEMS_PER_JOB`` included), so a request the gateway
accepts is never dead-lettered for its shape. Errors name the field path
and item index, never the submitted text.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from consumer.contract import JOB_ID_PATTERN, EvaluationRequest
from consumer.gateway.limits import Lease
from consumer.tenants import scoped_job_id
from consumer.validation import safe_errors

_JOB_ID = re.compile(JOB_ID_PATTERN)


class BodyTooLarge(Exception):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"request body larger than {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class BodyTooSlow(Exception):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"request body not received within {timeout_s:g} s")


class InvalidBody(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid request")
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Submission:
    job_id: str
    value: bytes  # the request message as produced
    total_items: int
    request_sha256: str  # of the items: the same request under the same job_id is the same job
    named: bool  # the client chose the job_id (else a fresh one: no earlier job can have it)


async def read_limited(
    chunks: AsyncIterator[bytes],
    declared_length: str | None,
    limit_bytes: int,
    lease: Lease | None = None,
    timeout_s: float | None = None,
) -> bytes:
    """The body, refused past ``limit_bytes``; its bytes taken from ``lease`` (the gateway's
    body budget) as they arrive, a declared length at once (Refused 503 past the budget).
    A body not all arrived within ``timeout_s`` raises BodyTooSlow (408): a half-sent body
    must not hold its share of the budget, a task and a connection for ever."""
    declared = int(declared_length) if declared_length is not None and declared_length.isdigit() else None
    if declared is not None and declared > limit_bytes:
        raise BodyTooLarge(limit_bytes)
    if lease is not None and declared is not None:
        lease.take(declared)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in chunks:
                body += chunk
                if len(body) > limit_bytes:
                    raise BodyTooLarge(limit_bytes)
                if lease is not None and len(body) > lease.held:
                    lease.take(len(body) - lease.held)
    except TimeoutError:
        raise BodyTooSlow(timeout_s or 0.0) from None
    return bytes(body)


NOT_JSON = "Content-Type must be application/json"


def is_json(content_type: str | None) -> bool:
    """A body-carrying POST must say ``application/json``: a cross-site form or ``text/plain``
    POST (no CORS preflight) is then refused before anything is read."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


def parse_submission(body: bytes, *, max_items: int, tenant: str | None = None) -> Submission:
    """With a ``tenant`` (a tenant's key) the job is written as ``<tenant>/<client id>``,
    or ``<tenant>/<uuid4>`` (122 random bits: not guessable) when the body has none."""
    try:
        request = EvaluationRequest.model_validate_json(body, context={"max_items": max_items})
    except ValidationError as exc:
        raise InvalidBody(_errors(exc)) from None
    if request.job_id is not None and ".." in request.job_id:
        # Ids name files and paths downstream (results files, tools): no parent-directory steps.
        problem = {"loc": ["body", "job_id"], "type": "string_pattern_mismatch", "msg": "must not contain '..'"}
        raise InvalidBody([problem])
    items_json = b"[" + b",".join(item.model_dump_json().encode() for item in request.items) + b"]"
    job_id = request.job_id or str(uuid.uuid4())
    if tenant is not None:
        job_id = scoped_job_id(tenant, job_id)
        if not _JOB_ID.fullmatch(job_id):
            limit = 128 - len(tenant) - 1
            raise InvalidBody([{"loc": ["body", "job_id"], "type": "string_too_long",
                                "msg": f"at most {limit} characters (the gateway adds the tenant)"}])  # fmt: skip
    value = request.model_copy(update={"job_id": job_id}).model_dump_json().encode()
    digest = hashlib.sha256(items_json).hexdigest()
    return Submission(job_id, value, len(request.items), digest, named=request.job_id is not None)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    # Without the input: the offending value may be a student's text.
    shown = []
    for error in safe_errors(exc)[:20]:
        # As FastAPI's own 422s: the path starts at "body".
        loc = ["body"] if error["type"] == "json_invalid" else ["body", *error["loc"]]
        shown.append({"loc": loc, "msg": error["msg"], "type": error["type"]})
    return shown
