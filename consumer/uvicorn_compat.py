"""Workarounds that let uvicorn run as a guest in the consumer's event loop.

Written for uvicorn 0.54.0 (pinned in requirements/constraints-*.txt).
``tests/test_compat.py`` fails when the installed version differs: then
check the overrides below against the new release (uvicorn.Server's
``capture_signals`` and ``startup``; H11Protocol's timers, for
``HeadTimeoutH11Protocol``) and drop what it no longer needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from importlib.metadata import version

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

WRITTEN_FOR_VERSION = "0.54.0"


def installed_version() -> str:
    return version("uvicorn")


class GuestServer(uvicorn.Server):
    """A uvicorn server that is a guest in someone else's event loop: it
    leaves the process's signals alone, reports a bind failure as the
    ``OSError`` it is, and says when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn installs SIGINT/SIGTERM handlers with ``signal.signal`` when
        # on the main thread (replacing the consumer's, even those set with
        # ``loop.add_signal_handler``), restores the old ones on exit and then
        # re-raises the signals it caught. The consumer owns signals: do none of it.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        except SystemExit as exc:
            # uvicorn answers a bind failure with sys.exit(); SystemExit would
            # escape the event loop and kill the consumer. Re-raise the OSError
            # it was handling (errno intact, e.g. EADDRINUSE) so start() raises it.
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise RuntimeError("HTTP server failed to start") from exc
        self.listening.set()


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head.

    uvicorn 0.54 arms no timer until a first response is sent (then only the
    keep-alive one, which data of a next request cancels): a client that sends
    half a request line or headers, or nothing, holds its connection for ever
    (150 such connections were still open after 48 s). Here a connection must
    deliver a complete request head within ``head_timeout_s`` of being opened
    or of its previous response; otherwise it is closed. The body's own
    deadline is the app's (it reads the body).
    """

    head_timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.head_timeout_s, self._head_late)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        timer, self._head_timer = getattr(self, "_head_timer", None), None
        if timer is not None:
            timer.cancel()

    def _head_late(self) -> None:
        self._head_timer = None
        waiting_for_head = self.cycle is None or self.cycle.response_complete
        if waiting_for_head and not self.transport.is_closing():
            self.transport.close()


def head_timeout_protocol(head_timeout_s: float) -> type[HeadTimeoutH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this deadline."""
    return type("HeadTimeoutH11Protocol", (HeadTimeoutH11Protocol,), {"head_timeout_s": head_timeout_s})
