"""One job's progress as Server-Sent Events, in the prototype's wire format.

Each event is ``id: <offset>`` + ``data: <the progress message>``, with no
``event:`` field (a browser's ``onmessage`` only sees unnamed events). The
stream replays the job's history after ``Last-Event-ID`` (all of it for a
new subscriber), then follows it live, and ends after the terminal event.
Heartbeat comments (sse-starlette's ping) keep proxies from closing an idle
stream; sse-starlette's send timeout closes the stream of a client that
stops reading, so it cannot hold a task for ever. Events are shared, never
copied per subscriber: a slow client costs its socket buffer only.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import AsyncIterator

from sse_starlette import ServerSentEvent

from consumer.gateway.jobs import JobRecord, JobStore, dumps, is_terminal
from consumer.gateway.metrics import GatewayMetrics

# Browsers wait ~3 s before reconnecting by default; after a gateway restart
# or a dropped proxy connection, one second is enough.
RECONNECT_MS = 1000
NOT_FOUND = dumps({"error": "Job not found"})
_MAX_ID = 2**63 - 1


class BadLastEventId(ValueError):
    pass


def parse_last_event_id(value: str | None) -> int | None:
    """The offset after which to resume; None to start from the beginning."""
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or int(value) > _MAX_ID:
        raise BadLastEventId("Last-Event-ID must be the id of an event of this stream (a non-negative integer)")
    return int(value)


async def job_stream(record: JobRecord, store: JobStore, metrics: GatewayMetrics,
                     after_offset: int | None) -> AsyncIterator[ServerSentEvent]:  # fmt: skip
    metrics.open_streams.inc()
    store.open_streams += 1
    try:
        offsets = [e.offset for e in record.events]
        cursor = 0 if after_offset is None else bisect.bisect_right(offsets, after_offset)
        replayed = len(record.events)  # events before this index are history, not live
        yield ServerSentEvent(comment="texteval", retry=RECONNECT_MS)
        while True:
            changed = record.changed
            while cursor < len(record.events):
                event = record.events[cursor]
                cursor += 1
                yield ServerSentEvent(data=event.payload, id=str(event.offset))
                metrics.events_delivered.inc()
                if cursor > replayed:
                    metrics.event_delivery_latency_seconds.observe(max(0.0, time.time() - event.timestamp_ms / 1000))
                if is_terminal(event.kind):
                    return
            if record.dropped or store.closing:
                return  # the client reconnects; another instance (or this one, later) serves it
            await changed.wait()
    finally:
        metrics.open_streams.dec()
        store.open_streams -= 1


async def not_found_stream() -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(data=NOT_FOUND)
