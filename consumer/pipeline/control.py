"""Control commands (contract 1.1): cancel a job, whichever instance owns it.

Every instance reads the whole control topic without a consumer group (a
command must reach the owner of the job, whoever that is now or later), from
``CANCEL_TTL_S`` ago on start, then follows it. Cancels are remembered for
that long, so a request that arrives after its cancel is never graded.
A malformed command is logged (coordinates only) and counted, never fatal.

1.2: a command is honoured only when its ``tenant`` owns the job
(``tenants.tenant_of``; ``erasure.honoured``) or it says ``admin``: anyone who may write the topic
for one school cannot cancel, pre-cancel or erase another school's job. A
foreign command is a no-op, counted (``result="foreign"``) and logged by ids.
An erase is a cancel (the same path, the same TTL: a later request under the
id is never graded) plus the job's ``erase``, which deletes its state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from consumer.contract import ControlAction, ControlCommand
from consumer.erasure import honoured
from consumer.kafka import Start, TopicReader
from consumer.pipeline.backoff import Backoff
from consumer.settings import DEFAULT_MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from consumer.metrics import Metrics

logger = logging.getLogger(__name__)

# A control topic not readable yet (created after the consumer started): 2 s, then up to 10 s.
CONTROL_BACKOFF = Backoff(first_s=2.0, max_s=10.0)


class CommandResult(StrEnum):
    """The `result` label of texteval_control_commands."""

    CANCEL = "cancel"  # the first command for a job
    ERASE = "erase"  # the first erase for a job
    REPEATED = "repeated"
    MALFORMED = "malformed"
    FOREIGN = "foreign"  # another tenant's job: ignored


class Commanded(Protocol):
    """What a command acts on (``jobstate.Ledger``)."""

    def cancel(self, job_id: str, until_s: float) -> None: ...

    def erase(self, job_id: str, until_s: float) -> None: ...


class ControlReader:
    def __init__(
        self,
        client: Mapping[str, Any],
        metrics: Metrics,
        jobs: Commanded,
        *,
        topic: str,
        ttl_s: float,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        backoff: Backoff = CONTROL_BACKOFF,
    ) -> None:
        """``client``: consumer.kafka.client_kwargs (the topic is read with no consumer group);
        ``jobs``: the holder of the cancels in force (``jobstate.Ledger``: a request's plan reads
        them), told ``cancel(job_id, until_s)`` on each job's first cancel (or erase) and whenever
        a later erase holds it longer, and ``erase(job_id, until_s)`` after it on each job's
        first erase (``until_s``: the unix time its TTL ends)."""
        self._client = client
        self._metrics = metrics
        metrics.expect(metrics.control_commands, CommandResult)
        self._jobs = jobs
        self._topic = topic
        self._ttl_s = ttl_s
        self._max_message_bytes = max_message_bytes
        self._backoff = backoff
        self._cancelled: dict[str, float] = {}  # job_id -> unix time of the command (cancel or erase)
        self._erased: dict[str, float] = {}  # job_id -> unix time of its erase
        self.ready = asyncio.Event()  # set once the commands of the last ttl_s are read

    async def run(self) -> None:
        """Read the commands of the last ``ttl_s``, then follow the topic until cancelled."""
        reader = await self._open()
        try:
            await reader.to_end(self._handle)
            self.ready.set()
            while True:
                for record in await reader.poll(timeout_ms=200):
                    self._handle(record)
                self._expire()
        finally:
            self.ready.set()
            await reader.__aexit__(None, None, None)

    async def _open(self) -> TopicReader:
        failures = 0
        while True:
            since_ms = int((time.time() - self._ttl_s) * 1000)
            reader = TopicReader(
                self._client, [self._topic], start=Start.BEGINNING, since_ms=since_ms,
                max_message_bytes=self._max_message_bytes, metadata_timeout_s=5.0,
            )  # fmt: skip
            try:
                return await reader.__aenter__()
            except (LookupError, KafkaError) as exc:
                logger.warning("control topic %s not readable (%s); retrying", self._topic, type(exc).__name__)
            failures += 1
            await asyncio.sleep(self._backoff.delay_s(failures))

    def _handle(self, record: object) -> None:
        value = getattr(record, "value", None)
        where = f"{getattr(record, 'partition', '?')}:{getattr(record, 'offset', '?')}"
        try:
            command = ControlCommand.model_validate_json(value or b"")
        except ValidationError as exc:
            logger.warning("malformed control command at %s: %d errors", where, exc.error_count())
            self._metrics.control_commands.labels(result=CommandResult.MALFORMED).inc()
            return
        timestamp_ms = getattr(record, "timestamp", None)
        at = timestamp_ms / 1000 if isinstance(timestamp_ms, int) and timestamp_ms > 0 else time.time()
        if time.time() - at > self._ttl_s:
            return
        if not honoured(command):
            # Ids only: which job, which tenant asked, where the command is.
            logger.warning("control command for another tenant's job ignored: action=%s job_id=%s tenant=%s at %s",
                           command.action.value, command.job_id, command.tenant or "-", where)  # fmt: skip
            self._metrics.control_commands.labels(result=CommandResult.FOREIGN).inc()
            return
        erase = command.action is ControlAction.ERASE
        first = command.job_id not in self._cancelled
        first_erase = erase and command.job_id not in self._erased
        before = self._cancelled.setdefault(command.job_id, at)
        if erase:  # an erase after a cancel holds for its own TTL
            self._erased.setdefault(command.job_id, at)
            self._cancelled[command.job_id] = max(self._cancelled[command.job_id], at)
        if first_erase:
            result = CommandResult.ERASE
        elif first and not erase:
            result = CommandResult.CANCEL
        else:
            result = CommandResult.REPEATED
        self._metrics.control_commands.labels(result=result).inc()
        if first:
            logger.info("%s received: job_id=%s", command.action.value, command.job_id)
        if first or self._cancelled[command.job_id] > before:
            self._jobs.cancel(command.job_id, self._cancelled[command.job_id] + self._ttl_s)
        if first_erase:
            if not first:
                logger.info("erase received: job_id=%s", command.job_id)
            self._jobs.erase(command.job_id, at + self._ttl_s)

    def _expire(self) -> None:
        horizon = time.time() - self._ttl_s
        for job_id in [j for j, at in self._cancelled.items() if at < horizon]:
            del self._cancelled[job_id]
            self._erased.pop(job_id, None)
