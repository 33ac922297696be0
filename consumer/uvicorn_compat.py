"""Workarounds that let uvicorn run as a guest in the consumer's event loop.

Written for uvicorn 0.54.0 (pinned in requirements/constraints-*.txt).
``tests/test_compat.py`` fails when the installed version differs: then
check both overrides below against the new release (uvicorn.Server's
``capture_signals`` and ``startup``) and drop what it no longer needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from importlib.metadata import version

import uvicorn

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
