"""Kafka for every part of texteval: the connection settings shared by every
aiokafka client (consumer, producer, admin, the CLI), a start-up check that
fails fast and clearly when they are wrong, topic creation, and the one
group-less `TopicReader` that every tool reading the output topics uses.

Why the check: aiokafka reports a refused password as "Unable to bootstrap
from [...]" (the cause only in a log line), a TLS client on a plaintext
listener waits the whole 40 s request timeout, and a SCRAM error some
brokers send makes it raise a bare ``KeyError: 'v'``. An operator should
instead read which setting is wrong, before a GPU spends minutes loading
the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeAlias

from consumer.settings import DEFAULT_MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import ConsumerRecord

    from consumer.settings import Settings

    Record: TypeAlias = ConsumerRecord[bytes, bytes]

logger = logging.getLogger(__name__)

__all__ = [
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "KafkaSetupError",
    "Start",
    "TopicFollower",
    "TopicReader",
    "check_connection",
    "client_kwargs",
    "ensure_topics",
    "topic_partitions",
]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
_SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


class KafkaSetupError(RuntimeError):
    """The Kafka settings cannot work. `reason` is one of: `config` (found
    without a network), `unreachable`, `tls`, `timeout`, `authentication`,
    `closed` (the broker hung up, e.g. it wants authentication), `metadata`
    (connected, but the broker refused to describe the cluster)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `AIOKafkaConsumer`, `AIOKafkaProducer` and
    `AIOKafkaAdminClient`: bootstrap servers, security protocol, SASL and TLS.

    SASL keys appear only when `KAFKA_SASL_MECHANISM` is set, so aiokafka's
    own defaults hold otherwise. With SSL or SASL_SSL the TLS context checks
    the broker's certificate against `KAFKA_SSL_CAFILE` (or the system CAs
    when unset) and its hostname. Settings that cannot work raise
    `KafkaSetupError(reason="config")` here rather than as an assertion deep
    inside aiokafka or, worse, as a silent plaintext connection.
    """
    protocol = settings.kafka.security_protocol.upper()
    mechanism = (settings.kafka.sasl_mechanism or "").upper() or None
    _validate(settings, protocol, mechanism)
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "security_protocol": protocol,
        "ssl_context": None,
    }
    if protocol in _TLS_PROTOCOLS:
        from aiokafka.helpers import create_ssl_context  # aiokafka is heavy to import

        kwargs["ssl_context"] = create_ssl_context(cafile=settings.kafka.ssl_cafile)
    if mechanism:
        password = settings.kafka.sasl_password
        kwargs |= {
            "sasl_mechanism": mechanism,
            "sasl_plain_username": settings.kafka.sasl_username,
            "sasl_plain_password": password.get_secret_value() if password is not None else None,
        }
    return kwargs


def _validate(settings: Settings, protocol: str, mechanism: str | None) -> None:
    def fail(message: str) -> None:
        raise KafkaSetupError("config", message)

    if protocol not in SECURITY_PROTOCOLS:
        fail(f"KAFKA_SECURITY_PROTOCOL={protocol!r}: use one of {', '.join(SECURITY_PROTOCOLS)}")
    if protocol in _SASL_PROTOCOLS:
        if mechanism is None:
            fail(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM ({', '.join(SASL_MECHANISMS)})")
        if not settings.kafka.sasl_username or settings.kafka.sasl_password is None:
            fail(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
    elif mechanism is not None:
        # aiokafka would silently connect without authenticating.
        fail(f"KAFKA_SASL_MECHANISM={mechanism} is ignored with KAFKA_SECURITY_PROTOCOL={protocol}: "
             f"use SASL_{protocol}")  # fmt: skip
    if mechanism is not None and mechanism not in SASL_MECHANISMS:
        fail(f"KAFKA_SASL_MECHANISM={mechanism!r}: use one of {', '.join(SASL_MECHANISMS)}")
    if settings.kafka.ssl_cafile is not None:
        if protocol not in _TLS_PROTOCOLS:
            fail(f"KAFKA_SSL_CAFILE is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS")
        if not settings.kafka.ssl_cafile.is_file():
            fail(f"KAFKA_SSL_CAFILE={settings.kafka.ssl_cafile}: no such file")


def is_loopback(host: str) -> bool:
    """A host name or address of this machine only (the gateway's exposure check, development brokers)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_brokers(bootstrap: str) -> bool:
    """Every bootstrap server on loopback: a developer's own broker."""
    hosts = [host for host, _ in _hosts(bootstrap) if host]
    return bool(hosts) and all(is_loopback(host) for host in hosts)


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for entry in bootstrap.split(","):
        host, _, port = entry.strip().rpartition(":")
        hosts.append((host.strip("[]") or entry.strip(), int(port) if port.isdigit() else 9092))
    return hosts


async def check_connection(settings: Settings, timeout_s: float = 10.0) -> None:
    """Connect to the bootstrap brokers as every client will (TLS, SASL),
    and ask for metadata. Returns at the first broker that answers; raises
    `KafkaSetupError` naming the setting to fix when none does, within about
    `timeout_s` per broker. The password never appears in the message.
    """
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaConnectionError, KafkaError
    from aiokafka.protocol.metadata import MetadataRequest

    kwargs = client_kwargs(settings)
    mechanism = kwargs.get("sasl_mechanism")
    failures: list[KafkaSetupError] = []
    for host, port in _hosts(settings.kafka.bootstrap_servers):
        where = f"{host}:{port}"
        logging_in = True  # until the connection (TLS, SASL) is up
        try:
            async with asyncio.timeout(timeout_s):
                conn = await create_conn(
                    host,
                    port,
                    client_id="texteval-check",
                    request_timeout_ms=int(timeout_s * 1000),
                    security_protocol=kwargs["security_protocol"],
                    ssl_context=kwargs["ssl_context"],
                    sasl_mechanism=mechanism,
                    sasl_plain_username=kwargs.get("sasl_plain_username"),
                    sasl_plain_password=kwargs.get("sasl_plain_password"),
                )
                logging_in = False
                try:
                    await conn.send(MetadataRequest([]))
                finally:
                    conn.close()
            return
        except TimeoutError:
            failures.append(
                KafkaSetupError(
                    "timeout",
                    f"{where} did not finish connecting within {timeout_s:g} s "
                    f"(KAFKA_SECURITY_PROTOCOL={kwargs['security_protocol']}; a TLS client on a plaintext "
                    "listener waits like this)",
                )
            )
        except ssl.SSLError as exc:
            failures.append(
                KafkaSetupError("tls", f"TLS with {where} failed: {exc.reason or exc}. Check KAFKA_SSL_CAFILE")
            )
        except KafkaConnectionError:
            hint = (
                f"is SASL {mechanism} enabled on that listener?"
                if mechanism
                else "does it require SASL? set KAFKA_SECURITY_PROTOCOL and KAFKA_SASL_*"
            )
            failures.append(KafkaSetupError("closed", f"{where} closed the connection ({hint})"))
        except (KafkaError, KeyError, ValueError) as exc:
            if not (logging_in and mechanism):
                if isinstance(exc, KafkaError):
                    failures.append(KafkaSetupError("metadata", f"{where} refused a metadata request: {exc}"))
                    continue
                raise
            # During the login, KafkaError is the broker's SASL answer
            # (authentication failed, unsupported mechanism, illegal state).
            # KeyError and ValueError come from aiokafka's SCRAM code when the
            # server's final message is an error ("e=...") instead of its
            # signature: the same refusal, worse worded.
            detail = str(exc) if isinstance(exc, KafkaError) else "the SCRAM exchange ended without the server's proof"
            failures.append(
                KafkaSetupError(
                    "authentication",
                    f"{where} refused SASL {mechanism} authentication as {settings.kafka.sasl_username!r} "
                    f"({detail}). Check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM",
                )
            )
        except OSError as exc:
            failures.append(KafkaSetupError("unreachable", f"cannot connect to {where}: {exc}"))
    if len(failures) == 1:
        raise failures[0]
    raise KafkaSetupError(failures[0].reason, "; ".join(str(f) for f in failures))


async def topic_partitions(consumer: Any, topic: str, *, timeout_s: float = 10.0, by_name: bool = False) -> list[Any]:
    """The topic's partitions as TopicPartitions, refreshing metadata while it is unknown.

    A client's metadata can predate a topic created a moment ago; raises
    LookupError when the topic still does not exist after ``timeout_s``.
    ``by_name``: ask for this topic by name, as assigning it would (a broker
    that creates topics on first use, like the embedded one, then creates it).
    """
    from aiokafka import TopicPartition

    if by_name:
        consumer._client.add_topic(topic)  # the next metadata request names it
    deadline = time.monotonic() + timeout_s
    while not (found := consumer.partitions_for_topic(topic)):
        if time.monotonic() >= deadline:
            raise LookupError(f"topic {topic} does not exist")
        # aiokafka has no public call to refresh metadata for an unassigned topic.
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    return [TopicPartition(topic, p) for p in sorted(found)]


_TOPIC_ALREADY_EXISTS = 36  # Kafka error code


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    **client_kwargs: Any,
) -> list[str]:
    """Create the topics (name -> partitions) that do not exist yet; return
    the names created. Existing topics are left as they are.

    `client_kwargs` go to `AIOKafkaAdminClient` (security settings, e.g.
    `kafka_config.client_kwargs(settings)`); `bootstrap` wins over a
    `bootstrap_servers` among them.
    """
    # Tansu accepts 0 partitions and makes a topic nobody can use.
    if bad := {name: n for name, n in topics.items() if n < 1}:
        raise ValueError(f"topics need at least one partition: {bad}")
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import for_code

    admin = AIOKafkaAdminClient(**{**client_kwargs, "bootstrap_servers": bootstrap})
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in topics if name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(name, topics[name], replication_factor, topic_configs=dict((configs or {}).get(name, {})))
                for name in missing
            ]
        )
    finally:
        await admin.close()
    created = []
    # (topic, error_code[, error_message, ...]) depending on the version.
    for name, code, *rest in response.topic_errors:
        if code == 0:
            created.append(name)
        elif code != _TOPIC_ALREADY_EXISTS:  # another process won the race
            message = rest[0] if rest and isinstance(rest[0], str) else ""
            raise for_code(code)(f"could not create topic {name!r}: {message}")
    return created


class Start(StrEnum):
    """Where a `TopicReader` starts on every partition."""

    BEGINNING = "beginning"  # everything the topic still holds
    END = "end"  # only what is produced after the reader has opened


def partition_for_key(key: bytes, partitions: Sequence[TopicPartition]) -> TopicPartition:
    """The partition a producer's default partitioner writes ``key`` to (murmur2, as the Java client)."""
    from aiokafka.partitioner import DefaultPartitioner

    ordered = sorted(partitions, key=lambda tp: tp.partition)
    chosen = DefaultPartitioner()(key, [tp.partition for tp in ordered], [tp.partition for tp in ordered])
    return next(tp for tp in ordered if tp.partition == chosen)


class TopicReader:
    """Reads topics from a position until a condition: the one group-less
    reader of every tool that watches the output topics (submit --follow,
    verify, the tests' and the benchmarks' readers) and of the consumer's job
    state and control commands (``consumer.pipeline``).

    No consumer group: it commits nothing and disturbs no consumer. The
    start positions are resolved when the reader opens, so a record produced
    after ``__aenter__`` returns is never missed (open before producing).
    ``client`` is `client_kwargs(settings)` or just ``{"bootstrap_servers": ...}``.
    """

    def __init__(
        self,
        client: Mapping[str, Any],
        topics: Sequence[str],
        *,
        start: Start,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        fetch_max_wait_ms: int = 500,
        metadata_timeout_s: float = 10.0,
        key: bytes | None = None,
        since_ms: int | None = None,
        partitions: Sequence[int] | None = None,
        by_name: bool = False,
    ) -> None:
        """``key``: read only the partition that key is written to (a job's records);
        ``since_ms``: with ``Start.BEGINNING``, start at the first record at or after
        this time (unix ms) instead, as far as the broker can tell (never later);
        ``partitions``: read only these partition numbers of each topic (the job
        state of the requests partitions a consumer was assigned); ``by_name``: see
        `topic_partitions`."""
        self._client = dict(client)
        self._topics = list(topics)
        self._start = start
        self._max_message_bytes = max_message_bytes
        # A small wait makes the broker answer a fetch as soon as anything
        # arrives: the benchmarks time records by when they are received.
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._metadata_timeout_s = metadata_timeout_s
        self._key = key
        self._since_ms = since_ms
        self._only = None if partitions is None else frozenset(partitions)
        self._by_name = by_name
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []

    async def __aenter__(self) -> Self:
        from aiokafka import AIOKafkaConsumer  # heavy import, only when reading

        size = self._max_message_bytes
        consumer = AIOKafkaConsumer(
            **self._client,
            enable_auto_commit=False,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            fetch_max_bytes=size,
            max_partition_fetch_bytes=size,
        )
        await consumer.start()
        try:
            for topic in self._topics:
                found = await topic_partitions(
                    consumer, topic, timeout_s=self._metadata_timeout_s, by_name=self._by_name
                )
                if self._only is not None:
                    found = [tp for tp in found if tp.partition in self._only]
                self._partitions += [partition_for_key(self._key, found)] if self._key is not None else found
            consumer.assign(self._partitions)
            if self._start is Start.END:
                await consumer.seek_to_end(*self._partitions)
            else:
                await consumer.seek_to_beginning(*self._partitions)
                if self._since_ms is not None:
                    await self._seek_to_time(consumer, self._since_ms)
            for tp in self._partitions:
                await consumer.position(tp)  # resolve now: seeking is lazy, later records must not be skipped
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        return self

    async def _seek_to_time(self, consumer: AIOKafkaConsumer, since_ms: int) -> None:
        found = await consumer.offsets_for_times(dict.fromkeys(self._partitions, since_ms))
        for tp, at in found.items():
            # None: nothing that late. A broker that answers offset 0 with
            # timestamp -1 instead (the embedded Tansu) is read from the start:
            # slower, never incomplete.
            if at is None:
                await consumer.seek_to_end(tp)
            elif at.timestamp >= 0:
                consumer.seek(tp, at.offset)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    def _live(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("TopicReader used outside its `async with`")
        return self._consumer

    async def poll(self, timeout_ms: int = 100, partitions: Sequence[TopicPartition] = ()) -> list[Record]:
        """The records that arrive within ``timeout_ms`` (maybe none), in partition order."""
        batches = await self._live().getmany(*partitions, timeout_ms=timeout_ms)
        return [record for records in batches.values() for record in records]

    async def until(self, done: Callable[[], bool], on_record: Callable[[Record], None], *, timeout_s: float) -> None:
        """Hand every record to ``on_record`` until ``done()``; `TimeoutError`
        when it is still false after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {', '.join(self._topics)}: condition not reached in {timeout_s:g} s")
            for record in await self.poll():
                on_record(record)

    async def to_end(self, on_record: Callable[[Record], None]) -> None:
        """Hand every record to ``on_record`` up to (at least) the end offsets
        taken now: a snapshot, so a busy topic still ends."""
        consumer = self._live()
        ends: dict[TopicPartition, int] = await consumer.end_offsets(self._partitions)
        # Positions, not record offsets: compaction and transaction markers
        # leave gaps, so the last record may sit before the end offset.
        # Records past the end are kept, not cut: the embedded broker (Tansu
        # 0.6) reports the end as the last *batch*'s base offset + 1, so only
        # whole fetched batches are sure to hold everything written before
        # the snapshot; a few later records only make a reader more complete.
        pending = [tp for tp in self._partitions if await consumer.position(tp) < ends[tp]]
        while pending:
            for record in await self.poll(timeout_ms=200, partitions=pending):
                on_record(record)
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]

    async def lag(self) -> dict[int, int]:
        """Records behind each partition's end (by partition number), as of the last fetch:
        no request to the broker (a followed topic's lag gauge)."""
        consumer = self._live()
        lag = {}
        for tp in self._partitions:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag[tp.partition] = max(0, highwater - await consumer.position(tp))
        return lag


async def stop_following(task: asyncio.Task[None] | None, reader: TopicReader | None, timeout_s: float) -> None:
    """Stop a task that follows a topic, then close its reader within ``timeout_s`` (either may be None)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if reader is not None:
        async with asyncio.timeout(timeout_s):
            await reader.__aexit__(None, None, None)


class TopicFollower:
    """A topic read to its end, then followed in the background: every record to ``apply``.

    For state kept from a whole topic (the gateway's erase marks, the job ids the
    consumers remember): ``start`` returns once everything the topic held is
    applied, so a caller can serve only with the whole picture. A fetch error is
    logged and retried (aiokafka reconnects by itself); ``apply`` must not raise.
    """

    def __init__(
        self, client: Mapping[str, Any], topic: str, apply: Callable[[Record], None], *,
        name: str, max_message_bytes: int, close_timeout_s: float,
    ) -> None:  # fmt: skip
        self._client, self._topic, self._apply = dict(client), topic, apply
        self._name = name
        self._max_message_bytes = max_message_bytes
        self._close_timeout_s = close_timeout_s
        self._reader: TopicReader | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        reader = TopicReader(
            self._client, [self._topic], start=Start.BEGINNING, max_message_bytes=self._max_message_bytes
        )
        await reader.__aenter__()
        try:
            await reader.to_end(self._apply)
        except BaseException:
            await reader.__aexit__(None, None, None)
            raise
        self._reader = reader
        self._task = asyncio.create_task(self._follow(reader), name=self._name)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _follow(self, reader: TopicReader) -> None:
        while True:
            try:
                records = await reader.poll(timeout_ms=500)
            except Exception:  # aiokafka reconnects by itself: reported and retried
                logger.exception("%s: fetch of %s failed; retrying", self._name, self._topic)
                await asyncio.sleep(1.0)
                continue
            for record in records:
                self._apply(record)

    async def stop(self) -> None:
        task, self._task = self._task, None
        reader, self._reader = self._reader, None
        await stop_following(task, reader, self._close_timeout_s)
