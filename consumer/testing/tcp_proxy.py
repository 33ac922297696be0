"""A TCP proxy a test can cut and restore, to take a broker off the network.

Clients reach the broker only through the proxy (the broker advertises the
proxy's address), so ``cut()`` is a network outage for them: every open
connection is reset and new ones are refused until ``restore()``.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1", port: int = 0) -> None:
        self._target = (target_host, target_port)
        self._host = listen_host
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.bytes_to_broker = 0  # what clients sent through the proxy (produce requests dominate)
        self.bytes_from_broker = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, self._host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()  # RST, as a failed network would look
        self._writers.clear()

    async def restore(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self._host, self.port, reuse_address=True)

    async def close(self) -> None:
        await self.cut()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, upstream_writer}
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer, "bytes_to_broker"),
            self._pipe(upstream_reader, client_writer, "bytes_from_broker"),
            return_exceptions=True,
        )
        self._writers -= {client_writer, upstream_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str) -> None:
        try:
            while data := await reader.read(65536):
                setattr(self, counter, getattr(self, counter) + len(data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()
