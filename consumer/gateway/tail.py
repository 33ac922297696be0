"""One reader of the whole progress topic, feeding the job store.

No consumer group: every gateway instance reads every partition, so any
instance can serve any job, including jobs produced straight to Kafka by
other systems. The reader is the one topic reader (``consumer.kafka.TopicReader``),
opened at the first record newer than ``JOB_TTL_SECONDS`` (the whole history
of every job still servable; the embedded broker cannot tell times apart and
is read from its start).

The tail reads what arrives (waiting at most ``_WAIT_FOR_NEW_MS`` at a
time, so it answers a request for a pass quickly) and, on request, reads a
pass: up to the topic's end as it is when the pass begins
(``TopicReader.to_end``). The first pass is the start-up replay: until it
ends, ``caught_up`` is not set and a job not met yet is not "not found",
only not read yet. ``read_to_now`` asks for a pass and waits for it
(read-your-writes for a job whose first event was produced a moment ago).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from consumer.contract import ProgressEvent
from consumer.gateway.jobs import AnyProgressEvent, JobStore
from consumer.gateway.metrics import GatewayMetrics
from consumer.kafka import Start, TopicReader, client_kwargs, stop_following

if TYPE_CHECKING:
    from consumer.settings import Settings

logger = logging.getLogger(__name__)

_EVENT = TypeAdapter[AnyProgressEvent](ProgressEvent)
_EXPIRE_EVERY_S = 5.0
_WAIT_FOR_NEW_MS = 50  # no request of its own (aiokafka fetches in the background): only wake-ups
_LAG_EVERY_S = 1.0


class ProgressTail:
    def __init__(self, settings: Settings, store: JobStore, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self.caught_up = asyncio.Event()
        self._reader: TopicReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._passes_begun = 0
        self._passes_done = 0
        self._pass_wanted = False
        self._pass_done = asyncio.Event()  # replaced after every pass

    async def start(self) -> None:
        """Open the reader at the window's start; the replay runs in the background."""
        s = self._settings
        reader = TopicReader(
            {**client_kwargs(s), "client_id": "texteval-gateway"}, [s.kafka.progress_topic], start=Start.BEGINNING,
            since_ms=int((time.time() - s.gateway.job_ttl_seconds) * 1000), max_message_bytes=s.kafka.max_message_bytes,
            fetch_max_wait_ms=s.gateway.fetch_max_wait_ms,
        )  # fmt: skip
        await reader.__aenter__()
        self._reader = reader
        self._task = asyncio.create_task(self._run(reader), name="progress-tail")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self, reader: TopicReader) -> None:
        next_expiry = next_lag = time.monotonic()
        while True:
            lag: dict[int, int] = {}
            try:
                if self._pass_wanted or not self.caught_up.is_set():
                    await self._pass(reader)
                for record in await reader.poll(timeout_ms=_WAIT_FOR_NEW_MS):
                    self._apply(record)
                if time.monotonic() >= next_lag:
                    next_lag, lag = time.monotonic() + _LAG_EVERY_S, await reader.lag()
            except Exception:
                # aiokafka reconnects by itself; a fetch error is reported and retried.
                logger.exception("progress tail fetch failed; retrying")
                self._metrics.kafka_up.set(0)
                await asyncio.sleep(1.0)
                continue
            self._metrics.kafka_up.set(1)
            for partition, behind in lag.items():
                self._metrics.tail_lag.labels(str(partition)).set(behind)
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + _EXPIRE_EVERY_S
                self._store.expire(time.time())
            self._metrics.jobs_kept.set(len(self._store))
            self._metrics.bytes_kept.set(self._store.bytes_kept)

    async def _pass(self, reader: TopicReader) -> None:
        """Read up to the end the topic has now; then say so (the first time: caught up)."""
        self._pass_wanted = False
        self._passes_begun += 1
        await reader.to_end(self._apply)
        self._passes_done = self._passes_begun
        done, self._pass_done = self._pass_done, asyncio.Event()
        done.set()
        if not self.caught_up.is_set():
            self.caught_up.set()
            self._metrics.tail_caught_up.set(1)
            logger.info("progress topic read up to its end: %d jobs kept", len(self._store))

    async def read_to_now(self, timeout_s: float = 2.0) -> bool:
        """Wait until everything in the topic now has been read: a pass begun after this call
        has ended (one under way may have taken its end before the record asked about)."""
        if self._reader is None:
            return False
        needed = self._passes_begun + 1
        self._pass_wanted = True
        try:
            async with asyncio.timeout(timeout_s):
                while self._passes_done < needed:
                    await self._pass_done.wait()
        except TimeoutError:
            return False
        return True

    def _apply(self, record: Any) -> None:
        if not record.value:
            self._metrics.invalid_events.inc()
            return
        try:
            event = _EVENT.validate_json(record.value)
        except ValidationError:
            # Logged by position only: a record value may hold anything.
            logger.warning("skipping a progress record that is not a contract event at %s:%d:%d",
                           record.topic, record.partition, record.offset)  # fmt: skip
            self._metrics.invalid_events.inc()
            return
        self._store.apply(event, record.value.decode("utf-8"), offset=record.offset, timestamp_ms=record.timestamp)

    async def stop(self) -> None:
        task, self._task = self._task, None
        reader, self._reader = self._reader, None
        await stop_following(task, reader, self._settings.kafka.close_timeout_s)
