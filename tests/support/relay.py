"""A TCP relay on loopback that a test can cut and restore: a database that goes away.

`relay = TcpRelay(target_host, target_port); await relay.start()` listens on 127.0.0.1:PORT
(`relay.port`, the same port across `cut()` and `restore()`) and copies bytes both ways.
With `tls=` (a server context) it terminates TLS: an HTTPS front of a plain HTTP server.
`cut()` closes the listener and every relayed connection (what a database restart or a lost
network path looks like to the client: refused connections, reset sessions); `restore()`
listens again. Other engineers share the PostgreSQL server: cutting the relay stops nothing
but this test's own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from tests.support.service import HOST


class TcpRelay:
    def __init__(
        self, target_host: str, target_port: int, tls: ssl.SSLContext | None = None
    ) -> None:
        self._target = (target_host, target_port)
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, self.port, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer), name="relay-up"),
            asyncio.create_task(self._pump(up_reader, writer), name="relay-down"),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):  # ssl.SSLError too
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        sink.transport.abort()
