"""Every gateway forgets an erased job, also one started after the erase (contract 1.2).

A gateway learns jobs from the progress topic, which keeps a job's events
for its retention (a day), and a restarted gateway replays the last
``JOB_TTL_SECONDS`` of it: forgetting a job in the one gateway that took the
``DELETE`` would not do. So every gateway reads the erase commands from the
control topic, the same commands the consumers obey: first the whole topic
up to its end, before the progress tail starts (a job erased before this
gateway started is never learnt), then every new command as it arrives (an
erase taken by another replica drops the job here too).

This holds while the control topic keeps a command at least as long as the
progress topic keeps the job's events: create-topics.sh gives both a day
(tests/gateway/test_erasure.py checks it), and erase marks are kept for
``CANCEL_TTL_S``, as long as the consumers refuse to grade the id.

Commands are judged as the consumer judges them (``erasure.honoured``): an
erase of another tenant's job, produced straight to the topic, drops nothing.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from consumer.contract import ControlAction, ControlCommand
from consumer.erasure import honoured
from consumer.kafka import TopicFollower, client_kwargs

if TYPE_CHECKING:
    from consumer.gateway.jobs import JobStore
    from consumer.settings import Settings

logger = logging.getLogger(__name__)


class ErasureFollower:
    def __init__(self, settings: Settings, store: JobStore) -> None:
        self._settings = settings
        self._store = store
        self._topic = TopicFollower(
            client_kwargs(settings), settings.kafka.control_topic, self._apply, name="erasure-follower",
            max_message_bytes=settings.kafka.max_message_bytes, close_timeout_s=settings.kafka.close_timeout_s,
        )  # fmt: skip

    async def start(self) -> None:
        """Read every erase command the control topic holds, then follow it in the background."""
        await self._topic.start()

    @property
    def running(self) -> bool:
        return self._topic.running

    async def stop(self) -> None:
        await self._topic.stop()

    def _apply(self, record: Any) -> None:
        try:
            command = ControlCommand.model_validate_json(record.value or b"")
        except ValidationError:
            return  # the consumers count malformed commands; here only erases matter
        if command.action is not ControlAction.ERASE or not honoured(command):
            return
        at_s = record.timestamp / 1000 if isinstance(record.timestamp, int) and record.timestamp > 0 else time.time()
        if time.time() - at_s > self._settings.kafka.cancel_ttl_s:
            return
        if self._store.erase(command.job_id, at_s):
            logger.info("job erased from memory: job_id=%s", command.job_id)
