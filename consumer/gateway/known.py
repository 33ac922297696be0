"""The job ids the consumers remember, so the gateway never accepts a job that will not be graded.

A consumer keeps every job's state (its request's fingerprint, then its end)
in the compacted job-state topic (``KAFKA_CHECKPOINTS_TOPIC``, key
``job_id``) for a week; a request re-sent under such an id with other
items is dead-lettered (``job_id_conflict``) without a progress event, and
with the same items only the terminal event is published again. A gateway
holds a job for ``JOB_TTL_SECONDS`` (less after an eviction, nothing of it
after a restart past the window): a ``POST`` under an id it forgot was
answered ``200 queued`` and never graded (issue 28, finding 3).

So every gateway reads the job-state topic's keys: the whole topic up to
its end at start (before it serves), then each new record as it arrives. A
record names a job the consumers remember; a tombstone (no value: the job
expired or was erased) removes it. Only keys are kept (an id is ~100 bytes:
a week of 100,000 jobs is ~10 MB); values are never parsed (they hold no
text, only counts and a fingerprint, but the gateway needs none of it, and
their format is the pipeline's, which the gateway does not import).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from consumer.kafka import Start, TopicReader, client_kwargs

if TYPE_CHECKING:
    from consumer.settings import Settings

logger = logging.getLogger(__name__)


class KnownJobIds:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ids: set[str] = set()
        self._reader: TopicReader | None = None
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    async def start(self) -> None:
        """Read the job-state topic up to its end, then follow it in the background."""
        s = self._settings
        reader = TopicReader(client_kwargs(s), [s.checkpoints_topic], start=Start.BEGINNING,
                             max_message_bytes=s.kafka_max_message_bytes)  # fmt: skip
        await reader.__aenter__()
        try:
            await reader.to_end(self.apply)
        except BaseException:
            await reader.__aexit__(None, None, None)
            raise
        self._reader = reader
        self._task = asyncio.create_task(self._follow(reader), name="known-job-ids")
        logger.info("the consumers remember %d job ids", len(self._ids))

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _follow(self, reader: TopicReader) -> None:
        while True:
            try:
                records = await reader.poll(timeout_ms=500)
            except Exception:  # aiokafka reconnects by itself: reported and retried
                logger.exception("job-state topic fetch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            for record in records:
                self.apply(record)

    def apply(self, record: Any) -> None:
        if not record.key:
            return
        job_id = bytes(record.key).decode("utf-8", errors="replace")
        if record.value is None:
            self._ids.discard(job_id)
        else:
            self._ids.add(job_id)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        reader, self._reader = self._reader, None
        if reader is not None:
            async with asyncio.timeout(self._settings.kafka_close_timeout_s):
                await reader.__aexit__(None, None, None)
