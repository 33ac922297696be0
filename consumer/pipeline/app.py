"""The consumer loop: poll, start what admission lets start; stop and drain.

    poll -> work (admission, the record's run) -> done -> checkpoint (commit)

The loop never waits on the engine: it keeps polling (so the group membership
stays alive through long GPU jobs) and starts every record ``work.Work``
lets start at once, so the engine batches across jobs. Everything about one
record, from admission to its offset, is ``work`` (the rebalance listener
too); the commit sequence is ``checkpoint``, on a timer; ``SafeFetch`` keeps
a bad record from stopping the poll; ``Watchdog`` checks the broker, the
output topics and the engine. A dead engine (seen by a job or the watchdog)
stops the consumer: nothing here can bring vLLM back, so the orchestrator
restarts the process, and unfinished jobs stay uncommitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from consumer.health import HealthReport
from consumer.pipeline.decisions import DecisionLog
from consumer.pipeline.fetch import SafeFetch
from consumer.pipeline.watchdog import Watchdog
from consumer.pipeline.work import Work

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from consumer.engine.base import GradingEngine
    from consumer.metrics import Metrics
    from consumer.pipeline.control import ControlReader
    from consumer.pipeline.jobstate import Ledger
    from consumer.pipeline.scheduler import Scheduler
    from consumer.pipeline.sinks import Sinks
    from consumer.settings import JobsSettings, KafkaSettings

logger = logging.getLogger(__name__)


class ConsumerApp:
    def __init__(
        self, consumer: AIOKafkaConsumer, sinks: Sinks, engine: GradingEngine, metrics: Metrics,
        *, jobs: JobsSettings, kafka: KafkaSettings, scheduler: Scheduler, ledger: Ledger, control: ControlReader,
        decisions: DecisionLog | None = None,
    ) -> None:  # fmt: skip
        """``jobs``, ``kafka``: the settings' sections it reads; ``ledger``: job state (and the
        cancels the ``control`` reader hands it); ``decisions``: grade records (contract 1.3; None:
        not written); ``scheduler``: decides what the engine runs next."""
        self._consumer, self._kafka, self._control = consumer, kafka, control
        self.scheduler = scheduler
        metrics.expect_model(engine.model_name)
        self._work = Work(
            consumer, sinks, engine, metrics, jobs=jobs, kafka=kafka, scheduler=scheduler, ledger=ledger,
            decisions=decisions,
        )  # fmt: skip
        self._fetch = SafeFetch(consumer, metrics)
        outputs = (kafka.results_topic, kafka.progress_topic, kafka.dlt_topic, kafka.checkpoints_topic)
        self._watchdog = Watchdog(
            consumer, engine, metrics, output_topics=outputs, interval_s=kafka.check_interval_s, group=self._work,
        )  # fmt: skip
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()

    # --- lifecycle -------------------------------------------------------

    async def run(self) -> None:
        """Consume until ``stop()``; then drain within the grace period."""
        work, watchdog = self._work, self._watchdog
        self._consumer.subscribe([self._kafka.requests_topic], listener=work)
        await watchdog.check()  # know whether the output topics exist before grading anything
        timers = [asyncio.create_task(self._control.run())]
        # Cancels of the last CANCEL_TTL_S first: a cancelled job's request must not start.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._control.ready.wait(), self._kafka.revoke_timeout_s)
        timers += [asyncio.create_task(work.checkpoint.run()), asyncio.create_task(watchdog.run())]
        try:
            while not self._stopping.is_set() and not self._engine_died():
                work.retry_due()  # first: they probe the outputs
                while not self._stopping.is_set() and (rec := work.next(outputs_ok=watchdog.outputs_ok)):
                    work.start(rec)
                work.apply_pause(outputs_ok=watchdog.outputs_ok)
                batches = await self._fetch.getmany(timeout_ms=100, max_records=100)
                for tp, records in batches.items():
                    for record in records:
                        work.add(tp, record)
        finally:
            for timer in timers:
                timer.cancel()
            await work.drain()
            self._stopped.set()

    def stop(self) -> None:
        """Begin a graceful stop (signal handlers call this)."""
        if not self._stopping.is_set():
            logger.info("stopping: draining %d jobs", self.active_jobs)
            self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    @property
    def engine_failed(self) -> bool:
        """The engine died: the process exits so that it is restarted."""
        return self._work.engine_failed is not None or self._watchdog.engine_dead is not None

    def _engine_died(self) -> bool:
        """Checked every turn of the loop: a dead engine (a job's or the watchdog's) stops the consumer."""
        detail = self._work.engine_failed or self._watchdog.engine_dead
        if detail is not None:
            logger.error("engine died (%s): stopping the consumer", detail)
            self.stop()
        return detail is not None

    @property
    def active_jobs(self) -> int:
        return self._work.jobs

    def health_report(self) -> HealthReport:
        work = self._work
        return self._watchdog.report(
            fetch=self._fetch, undelivered=work.undelivered, draining=self._stopping.is_set(),
            active_jobs=work.jobs, engine_in_flight=work.items, backlog_records=work.backlog,
        )  # fmt: skip
