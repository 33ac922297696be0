"""The gateway's parts and their lifetime: producer, progress tail, job store.

``gateway_running`` is the one way a gateway is built and started, used by
``texteval gateway``, the tests and the benchmark alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from consumer.commands import produce_command
from consumer.contract import ControlAction, ControlCommand
from consumer.erasure import erase_command, produce_erase
from consumer.gateway.auth import ApiKeys, Caller, keys_from
from consumer.gateway.corrections import AppliedGrades
from consumer.gateway.erasure import ErasureFollower
from consumer.gateway.jobs import JobRecord, JobStore
from consumer.gateway.known import KnownJobIds
from consumer.gateway.limits import BodyBudget, RateLimiter, StreamSlots
from consumer.gateway.metrics import GatewayMetrics
from consumer.gateway.results import RowsCache
from consumer.gateway.submit import Submission
from consumer.gateway.tail import ProgressTail
from consumer.gateway.tokens import StreamTokens
from consumer.kafka import client_kwargs, ensure_topics
from consumer.settings import Settings
from consumer.tenants import tenant_of

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

logger = logging.getLogger(__name__)

# How long a request for a job not met yet waits for the tail's start-up
# replay before answering "not found".
CATCH_UP_WAIT_S = 10.0


@dataclass
class Gateway:
    settings: Settings
    store: JobStore
    tail: ProgressTail
    producer: AIOKafkaProducer
    metrics: GatewayMetrics
    keys: ApiKeys
    tokens: StreamTokens
    slots: StreamSlots
    writes: RateLimiter  # per key
    auth_failures: RateLimiter  # per client address
    bodies: BodyBudget = field(default_factory=lambda: BodyBudget(64 * 1024 * 1024))  # request bodies held at once
    rows: RowsCache = field(default_factory=RowsCache)  # results rows of the jobs read last
    # The corrections applied through this gateway: the corrections route writes, the results files read.
    applied: AppliedGrades = field(default_factory=AppliedGrades)
    erasures: ErasureFollower | None = None  # erase commands from the control topic (None: unit tests' doubles)
    known: KnownJobIds | None = None  # the job ids the consumers remember (None: unit tests' doubles)

    @classmethod
    def build(cls, settings: Settings, store: JobStore, tail: ProgressTail, producer: AIOKafkaProducer,
              metrics: GatewayMetrics, keys: ApiKeys, erasures: ErasureFollower | None = None,
              known: KnownJobIds | None = None) -> Gateway:  # fmt: skip
        s = settings
        return cls(
            s, store, tail, producer, metrics, keys, erasures=erasures, known=known,
            tokens=StreamTokens(keys.key_digests(), s.gateway.stream_token_ttl_s),
            slots=StreamSlots(s.gateway.max_streams, s.gateway.max_streams_per_key),
            writes=RateLimiter(s.gateway.write_rate_per_s, s.gateway.write_burst),
            auth_failures=RateLimiter(s.gateway.auth_failure_rate_per_s, s.gateway.auth_failure_burst),
            bodies=BodyBudget(s.gateway.max_inflight_body_bytes),
        )  # fmt: skip

    async def produce_request(self, submission: Submission) -> None:
        await self.producer.send_and_wait(
            self.settings.kafka.requests_topic, value=submission.value, key=submission.job_id.encode()
        )
        self.metrics.jobs_submitted.inc()

    async def produce_cancel(self, job_id: str, caller: Caller) -> None:
        """The command names who sent it (contract 1.2): the consumer honours a
        tenant's cancel only for that tenant's job."""
        tenant, admin = _acting_for(caller, job_id)
        command = ControlCommand(action=ControlAction.CANCEL, job_id=job_id, tenant=tenant, admin=admin)
        await produce_command(self.producer, self.settings.kafka.control_topic, command)
        self.metrics.cancels.inc()

    async def produce_erase(self, job_id: str, caller: Caller) -> None:
        """The erase command (contract 1.2), then this gateway forgets the job at once; the
        others forget it when they read the command (``ErasureFollower``)."""
        tenant, admin = _acting_for(caller, job_id)
        command = erase_command(job_id, tenant=tenant, admin=admin)
        # The command, then the job's `erased` decision record (contract 1.3): readers of corrections skip it.
        await produce_erase(self.producer, self.settings, command)
        self.store.erase(job_id, time.time())

    async def find(self, job_id: str) -> JobRecord | None:
        """A job not met yet may be in what the tail has not read: at start-up
        (the replay), or produced a moment ago (by a consumer, another
        gateway's client, or straight to Kafka). Read up to now, then decide."""
        record = self.store.get(job_id)
        if record is None and not self.tail.caught_up.is_set():
            await self.wait_caught_up()
            record = self.store.get(job_id)
        if record is None and self.tail.caught_up.is_set() and await self.tail.read_to_now():
            record = self.store.get(job_id)
        return record

    async def find_for(self, caller: Caller, job_id: str) -> JobRecord | None:
        """Another tenant's job is an unknown one (404, never 403): decided
        from the id alone, before any lookup, so not even the time taken
        tells whether it exists."""
        if not caller.sees(job_id):
            return None
        return await self.find(job_id)

    async def wait_caught_up(self) -> bool:
        try:
            async with asyncio.timeout(CATCH_UP_WAIT_S):
                await self.tail.caught_up.wait()
        except TimeoutError:
            return False
        return True

    def health(self) -> tuple[bool, dict[str, object]]:
        reasons = []
        if not self.tail.running:
            reasons.append("progress tail stopped")
        if self.erasures is not None and not self.erasures.running:
            reasons.append("control topic reader stopped")
        elif self.known is not None and not self.known.running:
            reasons.append("job-state topic reader stopped")
        elif not self.tail.caught_up.is_set():
            reasons.append("reading the progress topic")
        if self.store.closing:
            reasons.append("shutting down")
        body: dict[str, object] = {
            "status": "healthy" if not reasons else "unhealthy",
            "reasons": reasons,
            "jobs_kept": len(self.store),
            "bytes_kept": self.store.bytes_kept,
            "open_streams": self.slots.total,
            "auth": "api_keys" if self.keys.required else "open",
        }
        return not reasons, body


@asynccontextmanager
async def gateway_running(
    settings: Settings, metrics: GatewayMetrics | None = None, keys: ApiKeys | None = None
) -> AsyncIterator[Gateway]:
    """A started gateway (producer up, tail started; the replay continues in
    the background). On exit, open streams end and the clients are closed.
    The app's lifespan runs it (``consumer.gateway.app``)."""
    from aiokafka import AIOKafkaProducer

    metrics = metrics or GatewayMetrics()
    keys = keys if keys is not None else keys_from(settings)  # before anything starts: refused settings fail fast
    if settings.kafka.create_topics:
        topics = dict.fromkeys(settings.service_topics(), settings.kafka.topic_partitions)
        await ensure_topics(settings.kafka.bootstrap_servers, topics, **client_kwargs(settings))
    store = JobStore(
        ttl_s=settings.gateway.job_ttl_seconds,
        max_jobs=settings.gateway.max_jobs,
        max_bytes=settings.gateway.max_bytes,
        on_evict=lambda reason: metrics.jobs_evicted.labels(reason.value).inc(),
        erased_ttl_s=settings.kafka.cancel_ttl_s,
    )
    producer = AIOKafkaProducer(
        **client_kwargs(settings),
        client_id="texteval-gateway",
        acks="all",
        enable_idempotence=False,  # as the consumer: the embedded broker refuses it
        linger_ms=0,  # one request per POST: nothing to batch, so no waiting
        max_request_size=settings.kafka.max_message_bytes,
    )
    await producer.start()
    tail = ProgressTail(settings, store, metrics)
    erasures = ErasureFollower(settings, store)
    known = KnownJobIds(settings)
    try:
        # Erased jobs first: the tail's replay must not learn them again.
        await erasures.start()
        await known.start()  # before serving: a POST under an id the consumers remember is refused
        await tail.start()
        yield Gateway.build(settings, store, tail, producer, metrics, keys, erasures, known)
    finally:
        store.close()
        await asyncio.sleep(0)  # let the streams see it and end
        try:
            await tail.stop()
            await known.stop()
            await erasures.stop()
        finally:
            async with asyncio.timeout(settings.kafka.close_timeout_s):
                await producer.stop()


def _acting_for(caller: Caller, job_id: str) -> tuple[str | None, bool]:
    """Whom a command speaks for (contract 1.2): a tenant's key its tenant, an operator's key
    ``admin``; on an open gateway (no keys, loopback) anyone is anyone, so the job's own tenant."""
    if caller.open:
        return tenant_of(job_id), False
    return caller.tenant, caller.admin
