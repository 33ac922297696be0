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

import logging
from typing import TYPE_CHECKING, Any

from consumer.kafka import TopicFollower, client_kwargs

if TYPE_CHECKING:
    from consumer.settings import Settings

logger = logging.getLogger(__name__)


class KnownJobIds:
    def __init__(self, settings: Settings) -> None:
        self._ids: set[str] = set()
        self._topic = TopicFollower(
            client_kwargs(settings), settings.kafka.checkpoints_topic, self.apply, name="known-job-ids",
            max_message_bytes=settings.kafka.max_message_bytes, close_timeout_s=settings.kafka.close_timeout_s,
        )  # fmt: skip

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    async def start(self) -> None:
        """Read the job-state topic up to its end, then follow it in the background."""
        await self._topic.start()
        logger.info("the consumers remember %d job ids", len(self._ids))

    @property
    def running(self) -> bool:
        return self._topic.running

    def apply(self, record: Any) -> None:
        if not record.key:
            return
        job_id = bytes(record.key).decode("utf-8", errors="replace")
        if record.value is None:
            self._ids.discard(job_id)
        else:
            self._ids.add(job_id)

    async def stop(self) -> None:
        await self._topic.stop()
