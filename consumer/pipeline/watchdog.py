"""What the consumer checks on a timer, and the health report built from it.

Every ``interval_s`` the broker is asked for its metadata: aiokafka
reconnects by itself, this only observes (group membership alone stays
"true" for a whole session timeout after the broker went away), and the
same answer says whether the output topics still exist. A topic that was
deleted or never created is reported on ``/health`` and stops admission:
grading work whose results cannot be written wastes the engine (and the
embedded broker even acknowledges writes to a deleted topic). The engine is
asked too: a dead engine (``engine_dead``) stops the consumer even when no job runs.

``report`` is ``/health``: ready, or the reasons it is not, with the figures
an operator looks at first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from aiokafka.errors import KafkaError

from consumer.health import HealthReport

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from consumer.engine.base import GradingEngine
    from consumer.metrics import Metrics
    from consumer.pipeline.fetch import SafeFetch

logger = logging.getLogger(__name__)


class Membership(Protocol):
    @property
    def member(self) -> bool: ...  # in the consumer group, with an assignment


class Watchdog:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        engine: GradingEngine,
        metrics: Metrics,
        *,
        output_topics: Sequence[str],
        interval_s: float,
        group: Membership,
    ) -> None:
        """``group``: whether this consumer is in its group (``work.Work``, the rebalance listener)."""
        self._consumer = consumer
        self._engine = engine
        self._metrics = metrics
        self._output_topics = tuple(output_topics)
        self._interval_s = interval_s
        self._group = group
        self.engine_dead: str | None = None  # why the engine is gone, once a check saw it: the consumer stops
        self.kafka_down_since: float | None = None  # monotonic time of the first failed check
        self.missing_topics: tuple[str, ...] = ()  # output topics the broker does not know

    @property
    def kafka_down_s(self) -> float | None:
        return None if self.kafka_down_since is None else time.monotonic() - self.kafka_down_since

    @property
    def outputs_ok(self) -> bool:
        return not self.missing_topics

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._interval_s)

    async def check(self) -> None:
        try:
            async with asyncio.timeout(self._interval_s * 2):
                topics = await self._consumer.topics()
        except (KafkaError, OSError, TimeoutError) as exc:
            if self.kafka_down_since is None:
                self.kafka_down_since = time.monotonic()
                logger.warning("Kafka unreachable: %s", type(exc).__name__)
        else:
            if self.kafka_down_since is not None:
                logger.info("Kafka reachable again after %.1f s", time.monotonic() - self.kafka_down_since)
                self.kafka_down_since = None
            missing = tuple(t for t in self._output_topics if t not in topics)
            if missing != self.missing_topics:
                if missing:
                    logger.error("output topics missing, admission paused: %s", ", ".join(missing))
                else:
                    logger.info("output topics present again: admission resumes")
            self.missing_topics = missing
        engine = self._engine.health()
        # Set here, not only when /health is asked: a scrape must not read
        # what the last probe left (0 when nothing probes).
        self._metrics.engine_up.set(1 if engine.loaded else 0)
        self._metrics.kafka_up.set(1 if self._group.member and self.kafka_down_since is None else 0)
        self._metrics.output_topics_up.set(1 if self.outputs_ok else 0)
        if not engine.loaded and self.engine_dead is None:
            self.engine_dead = engine.detail

    def report(
        self, *, fetch: SafeFetch, undelivered: int, active_jobs: int, engine_in_flight: int, backlog_records: int,
        draining: bool,
    ) -> HealthReport:  # fmt: skip
        """``undelivered``: records whose output could not be sent, waiting to be sent again."""
        engine, member = self._engine.health(), self._group.member
        reasons = []
        if not engine.loaded:
            reasons.append(f"engine not ready: {engine.detail}")
        if not member:
            reasons.append("not in the consumer group")
        if (down_s := self.kafka_down_s) is not None:
            reasons.append(f"Kafka unreachable for {down_s:.0f} s")
        if self.missing_topics:
            reasons.append(f"output topics missing: {', '.join(self.missing_topics)}")
        if fetch.failing is not None:
            reasons.append(f"fetching requests fails for {fetch.failing_for_s:.0f} s: {fetch.failing}")
        if undelivered:
            reasons.append(f"output delivery failing ({undelivered} records to send again)")
        if draining:
            reasons.append("draining")
        body: dict[str, object] = {
            "model_loaded": engine.loaded,
            "model": self._engine.model_name,
            "gpu_available": engine.device == "cuda",
            "active_jobs": active_jobs,
            "engine_in_flight": engine_in_flight,
            "kafka": {
                "group_member": member,
                "reachable": self.kafka_down_since is None,
                "output_topics_ok": self.outputs_ok,
                "assigned_partitions": len(self._consumer.assignment()),
                "paused_partitions": len(self._consumer.paused()),
                "backlog_records": backlog_records,
            },
            **engine.gpu_memory,
        }
        return HealthReport(ready=not reasons, reasons=reasons, body=body)
