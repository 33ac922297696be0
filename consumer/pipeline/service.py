"""Assemble and run the service: Kafka clients, the consumer app, the side HTTP server.

``consumer_running`` is the one way a ConsumerApp is built and started, used
by ``texteval run``, the demo and the integration tests alike, so tests
exercise the production wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from consumer.decisions import DecisionsSetupError, hmac_key
from consumer.engine.base import GradingEngine
from consumer.engine.calibration import CalibrationFileError, CalibrationTable
from consumer.engine.canary import CanaryFileError, CanaryItem, load_canary, run_canary
from consumer.health import HealthReport
from consumer.http import HttpServer, create_app
from consumer.kafka import KafkaSetupError, check_connection, client_kwargs, ensure_topics, topic_partitions
from consumer.metrics import Metrics
from consumer.pipeline.app import ConsumerApp
from consumer.pipeline.control import ControlReader
from consumer.pipeline.decisions import DecisionLog
from consumer.pipeline.jobstate import JobStateStore, Ledger
from consumer.pipeline.scheduler import Scheduler
from consumer.pipeline.shadow import ShadowSinks
from consumer.pipeline.sinks import Sinks
from consumer.settings import Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

logger = logging.getLogger(__name__)

EXIT_ENGINE_DIED = 3  # the orchestrator restarts the process; unfinished jobs are redone


def scheduler_from(settings: Settings, engine: GradingEngine, metrics: Metrics) -> Scheduler:
    return Scheduler(
        engine,
        metrics,
        policy=settings.scheduler.scheduling_policy,
        depth=settings.engine_depth_on(engine.health().device),  # MAX_NUM_SEQS defaults per device
        oldest_share=settings.scheduler.scheduler_oldest_share,
        tenant_weights=settings.scheduler.tenant_weights,
        by_tenant=settings.scheduler.scheduler_by_tenant,
    )


async def ensure_service_topics(settings: Settings) -> None:
    """Create the service's topics, the control topic included, if missing
    (development and demo; production topics are created by operations, see
    docker-compose.yml)."""

    settings = settings.as_shadow() if settings.jobs.shadow else settings  # the shadow's own topics
    partitions = settings.kafka.topic_partitions
    topics = dict.fromkeys(settings.service_topics(), partitions)
    # Job state keeps one record per job: compaction keeps the newest.
    configs = {
        settings.kafka.checkpoints_topic: {"cleanup.policy": "compact"},
        # Decision records outlive the texts: an appeal's window (contract 1.3).
        settings.kafka.decisions_topic: {"retention.ms": str(settings.privacy.decisions_retention_ms)},
    }
    await ensure_topics(settings.kafka.bootstrap_servers, topics, configs=configs, **client_kwargs(settings))


@asynccontextmanager
async def consumer_running(settings: Settings, engine: GradingEngine, metrics: Metrics) -> AsyncIterator[ConsumerApp]:
    """A started ConsumerApp; on exit it drains, commits and leaves the group."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    # A shadow (pipeline/shadow.py): its results and job state on the shadow topics, no records.
    settings = settings.as_shadow() if settings.jobs.shadow else settings
    kafka = client_kwargs(settings)
    producer = AIOKafkaProducer(
        **kafka,
        client_id="texteval",
        acks="all",
        # The embedded broker (and aiokafka's KIP-447-less client) cannot do
        # idempotence or transactions: delivery is at-least-once by design.
        enable_idempotence=False,
        linger_ms=settings.kafka.linger_ms,
        max_request_size=settings.kafka.max_message_bytes,
        compression_type=None if settings.kafka.compression_type == "none" else settings.kafka.compression_type,
    )
    consumer = AIOKafkaConsumer(
        **kafka,
        client_id="texteval",
        group_id=settings.kafka.group_id,
        group_instance_id=settings.kafka.group_instance_id,
        enable_auto_commit=False,  # offsets are committed only when work is done
        auto_offset_reset="earliest",  # a new group must not skip waiting jobs
        isolation_level=settings.kafka.isolation_level,
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms,
        # The poll loop never blocks on the engine, so these only need to
        # cover one loop turn and the bounded work done on revoke.
        max_poll_interval_ms=300_000,
        rebalance_timeout_ms=60_000,
        max_partition_fetch_bytes=settings.kafka.max_message_bytes,
        fetch_max_bytes=settings.kafka.max_message_bytes,
    )
    await producer.start()
    try:
        await consumer.start()
    except BaseException:
        await producer.stop()
        raise
    topics = {
        "results_topic": settings.kafka.results_topic, "progress_topic": settings.kafka.progress_topic,
        "dlt_topic": settings.kafka.dlt_topic, "group_id": settings.kafka.group_id,
        "decisions_topic": settings.kafka.decisions_topic,
    }  # fmt: skip
    sinks = ShadowSinks(producer, metrics=metrics, **topics) if settings.jobs.shadow else Sinks(producer, **topics)
    decisions = None
    if settings.privacy.decision_records:
        decisions = DecisionLog(
            sinks, engine, key=hmac_key(settings), topic=settings.kafka.decisions_topic, client=kafka,
            max_message_bytes=settings.kafka.max_message_bytes,
        )  # fmt: skip
    try:
        ledger, control = await job_state(settings, consumer, producer, metrics)
    except BaseException:
        await consumer.stop()
        await producer.stop()
        raise
    app = ConsumerApp(
        consumer, sinks, engine, metrics, jobs=settings.jobs, kafka=settings.kafka,
        scheduler=scheduler_from(settings, engine, metrics), ledger=ledger, control=control, decisions=decisions,
    )  # fmt: skip
    task = asyncio.create_task(app.run())
    try:
        yield app
    finally:
        app.stop()
        try:
            # The drain is bounded by SHUTDOWN_GRACE_S; this outer bound is a
            # backstop so a stuck await (seen under a rebalance storm on the
            # embedded broker) can never keep the process alive. What was not
            # committed is redelivered: at-least-once still holds.
            limit_s = settings.kafka.shutdown_grace_s + settings.kafka.close_timeout_s
            done, _ = await asyncio.wait([task], timeout=limit_s)
            if not done:
                logger.warning("consumer loop still running %.0f s after stop; cancelling it", limit_s)
                task.cancel()
                await asyncio.wait([task], timeout=settings.kafka.close_timeout_s)
            elif task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        finally:
            # Bounded: aiokafka's stop() first lets the group coordination
            # finish its rebalance, which never ends while members keep
            # joining and dying. Offsets are committed by now; a member that
            # does not say goodbye is dropped after the session timeout.
            await _bounded(consumer.stop(), "leaving the consumer group", settings.kafka.close_timeout_s)
            await _bounded(producer.stop(), "closing the producer", settings.kafka.close_timeout_s)


async def job_state(
    settings: Settings, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, metrics: Metrics
) -> tuple[Ledger, ControlReader]:
    """The job state (its store on KAFKA_CHECKPOINTS_TOPIC) and the control-topic reader, for a ConsumerApp.

    Partition p of the job-state topic holds the jobs of requests partition
    p, so it must have at least as many partitions: refuse to start otherwise
    (a missing topic is reported by the watchdog instead, like the outputs).
    """
    # No group, no commits: state and commands are read whole by whoever needs them.
    client = {**client_kwargs(settings), "isolation_level": settings.kafka.isolation_level}
    with contextlib.suppress(LookupError):
        requests = await topic_partitions(consumer, settings.kafka.requests_topic, timeout_s=5.0)
        checkpoints = await topic_partitions(consumer, settings.kafka.checkpoints_topic, timeout_s=5.0)
        if len(checkpoints) < len(requests):
            raise KafkaSetupError(
                "config",
                f"{settings.kafka.checkpoints_topic} has {len(checkpoints)} partitions, fewer than the "
                f"{len(requests)} of {settings.kafka.requests_topic}: create it with as many (KAFKA_CHECKPOINTS_TOPIC)",
            )
    size = settings.kafka.max_message_bytes
    store = JobStateStore(
        producer, client, metrics, topic=settings.kafka.checkpoints_topic,
        retention_s=settings.privacy.job_id_retention_s, max_message_bytes=size,
    )  # fmt: skip
    # A shadow grades only its sample (pipeline/shadow.py); the plan takes the others as done.
    ledger = Ledger(store, metrics, sample_rate=settings.jobs.shadow_sample_rate if settings.jobs.shadow else 1.0)
    control = ControlReader(
        client,
        metrics,
        ledger,
        topic=settings.kafka.control_topic,
        ttl_s=settings.kafka.cancel_ttl_s,
        max_message_bytes=size,
    )
    return ledger, control


async def _bounded(step: Awaitable[None], what: str, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await step
    except TimeoutError:
        logger.warning("%s took longer than %.0f s; going on without it", what, timeout_s)


class _ServiceHealth:
    """Health before the consumer exists (engine loading), then the app's own."""

    def __init__(self) -> None:
        self.app: ConsumerApp | None = None
        self.phase = "starting"
        self.model_loaded = False
        self.canary: str | None = None  # "running", "passed", "failed"; None without CANARY_FILE

    def health_report(self) -> HealthReport:
        if self.app is None:
            body: dict[str, object] = {"model_loaded": self.model_loaded, "active_jobs": 0}
            if self.canary is not None:
                body["canary"] = self.canary
            return HealthReport(ready=False, reasons=[self.phase], body=body)
        return self.app.health_report()


async def _canary_passes(
    engine: GradingEngine, canary: list[CanaryItem], settings: Settings, metrics: Metrics, health: _ServiceHealth
) -> bool:
    health.phase = "canary running"
    health.canary = "running"
    metrics.canary_passed.set(0)
    verdict = await run_canary(engine, canary, tolerance=settings.engine.canary_tolerance)
    if verdict.passed:
        health.canary = "passed"
        logger.info("%s in %.1f s", verdict.reason(), verdict.duration_s)
        return True
    health.canary = "failed"
    health.phase = verdict.reason()  # ids, indexes and grades only
    logger.error("%s; not consuming (fix the model or CANARY_FILE, then restart)", health.phase)
    return False


async def serve(settings: Settings, engine: GradingEngine | None = None) -> int:
    """``texteval run``: until SIGTERM/SIGINT, then drain and exit 0."""
    from consumer.engine.factory import build_engine

    metrics = Metrics()
    health = _ServiceHealth()
    http = HttpServer(create_app(health, metrics), settings.http.host, settings.http.port)
    await http.start()
    stop = asyncio.Event()

    def on_signal() -> None:
        stop.set()
        if health.app is not None:
            health.app.stop()  # /health says 503 "draining" from this instant

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        # A bad canary file fails before minutes of loading the model.
        canary = load_canary(settings.engine.canary_file) if settings.engine.canary_file is not None else None
        if settings.engine.calibration_file is not None:  # so does a bad calibration file
            CalibrationTable.load(settings.engine.calibration_file)
    except (CanaryFileError, CalibrationFileError) as exc:
        logger.error("cannot start: %s", exc)
        await http.stop()
        return 2
    try:
        if settings.privacy.decision_records and not settings.jobs.shadow:  # a shadow writes none
            hmac_key(settings)  # refused without a key off loopback: before minutes of loading the model
    except DecisionsSetupError as exc:
        logger.error("cannot start: %s", exc)
        await http.stop()
        return 2
    try:
        # A wrong password, TLS setting or address fails here in seconds with
        # the setting to fix, not after minutes of loading the model.
        health.phase = "checking Kafka"
        await check_connection(settings)
        health.phase = "engine loading"
        engine = engine or await build_engine(settings)
        health.model_loaded = True
        if stop.is_set():
            return 0
        if canary is not None and not await _canary_passes(engine, canary, settings, metrics, health):
            # Never grade real jobs with a model that fails its canary: stay
            # out of the group, unready with the reason, until told to stop.
            await stop.wait()
            return 0
        metrics.canary_passed.set(1)
        if settings.kafka.create_topics:
            await ensure_service_topics(settings)
        health.phase = "joining the consumer group"
        async with consumer_running(settings, engine, metrics) as app:
            health.app = app
            logger.info("consuming %s as group %s", settings.kafka.requests_topic, settings.kafka.group_id)
            stopped = asyncio.create_task(app.wait_stopped())
            signalled = asyncio.create_task(stop.wait())
            await asyncio.wait([stopped, signalled], return_when=asyncio.FIRST_COMPLETED)
            signalled.cancel()
            if stop.is_set():
                logger.info("signal received: draining (grace %.0f s)", settings.kafka.shutdown_grace_s)
        if app.engine_failed:
            logger.error("exiting with code %d so the service is restarted", EXIT_ENGINE_DIED)
            return EXIT_ENGINE_DIED
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if engine is not None:
            await engine.close()
        await http.stop()
