"""The routes' dependencies, as typed ``Annotated`` aliases (FastAPI's
"Bigger Applications" layout; the full-stack template's ``api/deps.py``).

- ``GatewayDep``: the running gateway (``app.state.gateway``, set by the lifespan).
- ``CallerDep``: who calls, by API key (401 for nobody; 429 once an address
  has sent too many wrong keys). ``ReaderDep``: the same, or a stream token
  for this very job (browsers' URLs). ``WriterDep``: a caller within its
  school's write limit (429).
- ``JobDep`` / ``ReadableJobDep``: the path's job as that caller may see it;
  ``JobNotFound`` (404) for an unknown job and for another tenant's alike.

FastAPI resolves a route's dependencies in the order its parameters are
declared and runs each once per request, so a route that declares
``WriterDep`` and then ``JobDep`` checks the key, then the limit, then
looks the job up, and identifies the caller once.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from consumer.gateway.auth import Caller
from consumer.gateway.errors import JobNotFound, Unauthorized
from consumer.gateway.jobs import JobRecord
from consumer.gateway.limits import Limit, Refused
from consumer.gateway.middleware import audit_entry
from consumer.gateway.service import Gateway


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(gateway_of)]


def _failed(request: Request, gateway: Gateway) -> Exception:
    """A missing or wrong key (or stream token): 401, or 429 once this address has sent too many.

    Only failures are counted, and only after the key was checked: a valid key is never
    refused for what others sent from its address (behind a NAT or an ingress every school
    shares one). The address is the TCP peer's, or the proxy's ``X-Forwarded-For`` only when
    ``GATEWAY_FORWARDED_ALLOW_IPS`` names that proxy (consumer/http.py)."""
    peer = request.client.host if request.client is not None else "unknown"
    try:
        gateway.auth_failures.take(peer, "requests with a wrong key from this address", Limit.AUTH_FAILURES)
    except Refused as exc:
        return exc
    return Unauthorized()


def _identified(request: Request, gateway: Gateway, caller: Caller | None) -> Caller:
    entry = audit_entry(request)
    entry.active = True  # a route that takes a key: an action, audited
    if caller is None:
        raise _failed(request, gateway)
    entry.caller = caller
    return caller


async def key_caller(
    request: Request,
    gateway: GatewayDep,
    authorization: Annotated[str | None, Header()] = None,
    access_token: Annotated[str | None, Query()] = None,
) -> Caller:
    """Who is calling: a tenant, an operator, or anyone on an open gateway."""
    return _identified(request, gateway, gateway.keys.identify(authorization, access_token))


CallerDep = Annotated[Caller, Depends(key_caller)]


async def key_or_token_caller(
    request: Request,
    gateway: GatewayDep,
    job_id: str,
    token: Annotated[str | None, Query()] = None,
    authorization: Annotated[str | None, Header()] = None,
    access_token: Annotated[str | None, Query()] = None,
) -> Caller:
    """As ``key_caller``, or a stream token for this very job."""
    if token is None or not gateway.keys.required:
        return _identified(request, gateway, gateway.keys.identify(authorization, access_token))
    return _identified(request, gateway, gateway.tokens.verify(token, job_id, time.time()))


ReaderDep = Annotated[Caller, Depends(key_or_token_caller)]


async def writer(caller: CallerDep, gateway: GatewayDep) -> Caller:
    """The caller, within its school's write limit (every key of a tenant shares one)."""
    if not caller.open:
        gateway.writes.take(caller.limit_key, "writes for this school", Limit.WRITES)
    return caller


WriterDep = Annotated[Caller, Depends(writer)]


async def _owned(caller: Caller, gateway: Gateway, job_id: str) -> JobRecord:
    """The caller's job; another tenant's, or none, is not found (404), never shown."""
    record = await gateway.find_for(caller, job_id)
    if record is None:
        raise JobNotFound()
    return record


async def job_of(caller: CallerDep, gateway: GatewayDep, job_id: str) -> JobRecord:
    return await _owned(caller, gateway, job_id)


JobDep = Annotated[JobRecord, Depends(job_of)]


async def readable_job_of(caller: ReaderDep, gateway: GatewayDep, job_id: str) -> JobRecord:
    return await _owned(caller, gateway, job_id)


ReadableJobDep = Annotated[JobRecord, Depends(readable_job_of)]
