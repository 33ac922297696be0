"""``GET /stream/{job_id}``: a job's progress as Server-Sent Events (``sse.py``).

A stream holds one of the gateway's stream slots (and one of its school's)
from before the lookup until it ends, however it ends. An unknown job is
answered as the prototype did: a 200 stream with ``data: {"error": "Job not
found"}`` (its audit line says 404).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response

from consumer.gateway.deps import GatewayDep, ReaderDep
from consumer.gateway.middleware import audit_entry
from consumer.gateway.sse import GuardedEventSource, job_stream, not_found_stream, parse_last_event_id

router = APIRouter()


def resume_after(
    caller: ReaderDep,
    last_event_id: Annotated[str | None, Header()] = None,
    last_event_id_query: Annotated[str | None, Query(alias="last_event_id")] = None,
) -> int | None:
    """The offset to resume after (``Last-Event-ID``; the query for clients that cannot set it);
    checked after the caller, 400 (``BadLastEventId``) for anything but an event id."""
    return parse_last_event_id(last_event_id if last_event_id is not None else last_event_id_query)


@router.get("/stream/{job_id:path}")
async def stream(
    request: Request,
    job_id: str,
    caller: ReaderDep,
    after: Annotated[int | None, Depends(resume_after)],
    gateway: GatewayDep,
) -> Response:
    settings = gateway.settings
    slot = gateway.slots.acquire(None if caller.open else caller.limit_key)
    try:
        record = await gateway.find_for(caller, job_id)
    except BaseException:
        slot.release()
        raise
    if record is None:
        audit_entry(request).status = 404
    content = not_found_stream() if record is None else job_stream(record, gateway.store, gateway.metrics, after)
    return GuardedEventSource(
        content, stall_timeout_s=settings.gateway.send_timeout_s, ping_s=settings.gateway.heartbeat_s,
        on_close=slot.release, on_stalled=gateway.metrics.streams_stalled.inc,
    )  # fmt: skip
