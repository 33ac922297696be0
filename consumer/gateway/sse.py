"""One job's progress as Server-Sent Events, in the prototype's wire format.

Each event is ``id: <offset>`` + ``data: <the progress message>``, with no
``event:`` field (a browser's ``onmessage`` only sees unnamed events). The
stream replays the job's history after ``Last-Event-ID`` (all of it for a
new subscriber), then follows it live, and ends after the terminal event.
Heartbeat comments (sse-starlette's ping) keep proxies from closing an idle
stream. ``GuardedEventSource`` closes the stream of a client that stops
reading, so it cannot hold a task for ever, without dropping one that
reads slowly on a busy machine. Events are shared, never copied per
subscriber: a slow client costs its socket buffer only.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import AsyncIterator, Callable

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message, Receive, Scope, Send

from consumer.gateway.jobs import JobRecord, JobStore, dumps, is_terminal
from consumer.gateway.metrics import GatewayMetrics

logger = logging.getLogger(__name__)

# A stalled send is checked this many times, evenly over the send timeout,
# before the stream is dropped: when the event loop is busy the checks run
# late, and the timeout stretches with them.
STALL_CHECKS = 4

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
            if record.finished:
                return  # resumed past the terminal event (Last-Event-ID): nothing more will come
            await changed.wait()
    finally:
        metrics.open_streams.dec()
        store.open_streams -= 1


async def not_found_stream() -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(data=NOT_FOUND)


class StreamStalled(Exception):
    """The client took no write for the send timeout: it is not reading."""


class GuardedEventSource(EventSourceResponse):
    """An SSE response that drops a client that stopped reading, and calls
    ``on_close`` (the stream's slot) however it ends.

    sse-starlette's own ``send_timeout`` drops a stream when one write takes
    longer than the timeout, which on a loaded machine also drops a client
    that reads (a loopback reader of 8 MB in the same event loop was dropped
    at 1 s). Here a write may take as long as it needs while it completes;
    a stream is dropped only when one write has made no progress for the
    whole timeout *and* over ``STALL_CHECKS`` checks: the checks are event-
    loop timers, so a busy loop (which also delays the readers) lengthens
    the window instead of dropping everyone.
    """

    def __init__(self, content: AsyncIterator[ServerSentEvent], *, stall_timeout_s: float,
                 on_close: Callable[[], None], on_stalled: Callable[[], None], ping_s: float) -> None:  # fmt: skip
        super().__init__(content, ping=ping_s, headers={"Cache-Control": "no-store"})
        self._stall_timeout_s = stall_timeout_s
        self._on_close = on_close
        self._on_stalled = on_stalled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def guarded_send(message: Message) -> None:
            started = time.monotonic()
            pending = asyncio.ensure_future(send(message))
            checks = 0
            while True:
                done, _ = await asyncio.wait({pending}, timeout=self._stall_timeout_s / STALL_CHECKS)
                if done:
                    pending.result()
                    return
                checks += 1
                if checks >= STALL_CHECKS and time.monotonic() - started >= self._stall_timeout_s:
                    pending.cancel()
                    raise StreamStalled()

        try:
            await super().__call__(scope, receive, guarded_send)
        except StreamStalled:
            # The server closes the connection (the response never ended);
            # the client, if it ever reads again, reconnects with Last-Event-ID.
            self._on_stalled()
            logger.info("dropped a stream whose client took no write for %.0f s", self._stall_timeout_s)
        finally:
            self._on_close()
