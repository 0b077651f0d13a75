"""The demo's endpoints on 127.0.0.1: a DNS server for `demo.test` and two HTTPS endpoints.

- `shop.demo.test`: the watched endpoint (role `endpoint`); its DNS answer (A 127.0.0.1 or
  NXDOMAIN) and its HTTP status are switched at runtime to inject faults.
- `control.demo.test`: the control endpoint (role `control`); always answers 200.

Everything listens on ephemeral ports of 127.0.0.1 only, runs in the caller's event loop and
stops promptly, open connections included.
"""

from __future__ import annotations

import asyncio
import http
import ssl
from dataclasses import dataclass

from egresswatch.demo.dns import HOST, DemoDns
from egresswatch.demo.pki import make_pki

ZONE = "demo.test"
SHOP = f"shop.{ZONE}"
CONTROL = f"control.{ZONE}"
_HEAD_LIMIT = 16 * 1024
_READ_S = 5.0  # a client that sends nothing is dropped after this


class DemoHttps:
    """An HTTPS endpoint answering every request with `status` (settable at any time)."""

    def __init__(self, name: str, path: str, context: ssl.SSLContext) -> None:
        self.name = name
        self.path = path
        self.status = 200
        self.port = 0
        self._context = context
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"https://{self.name}:{self.port}{self.path}"

    async def start(self) -> DemoHttps:
        self._server = await asyncio.start_server(self._serve, HOST, 0, ssl=self._context)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening and cut open connections. Idempotent."""
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection (HTTP/1.1 with `Connection: close`), as the probe sends."""
        self._writers.add(writer)
        try:
            async with asyncio.timeout(_READ_S):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) <= _HEAD_LIMIT:
                writer.write(_response(self.status, self.name))
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            # path_trace connects without TLS and leaves; others may break off too. A demo
            # endpoint has nobody to report that to.
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


def _response(status: int, name: str) -> bytes:
    phrase = http.HTTPStatus(status).phrase
    body = (
        f"{name} is fine\n"
        if status < 400
        else f"{name} answers {status} {phrase}: broken on purpose by egresswatch demo\n"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def status_text(status: int) -> str:
    """`503 Service Unavailable`."""
    return f"{status} {http.HTTPStatus(status).phrase}"


@dataclass
class DemoEndpoints:
    """The started endpoints and the demo CA's certificate (PEM)."""

    dns: DemoDns
    shop: DemoHttps
    control: DemoHttps
    ca_pem: bytes

    @classmethod
    async def start(cls) -> DemoEndpoints:
        """Make the CA, start DNS and both HTTPS endpoints; on failure stop what started."""
        # Key generation off the event loop, so a Ctrl-C meanwhile is handled at once.
        pki = await asyncio.to_thread(make_pki, [SHOP, CONTROL])
        dns = DemoDns(ZONE)
        shop = DemoHttps(SHOP, "/health", pki.contexts[SHOP])
        control = DemoHttps(CONTROL, "/", pki.contexts[CONTROL])
        endpoints = cls(dns, shop, control, pki.ca_pem)
        try:
            for server in (dns, shop, control):
                await server.start()
        except BaseException:
            await endpoints.stop()
            raise
        dns.answer(SHOP, HOST)
        dns.answer(CONTROL, HOST)
        return endpoints

    def break_dns(self) -> None:
        self.dns.nxdomain(SHOP)

    def repair_dns(self) -> None:
        self.dns.answer(SHOP, HOST)

    def break_http(self, status: int) -> None:
        self.shop.status = status

    def repair_http(self) -> None:
        self.shop.status = 200

    async def stop(self) -> None:
        """Stop everything. Idempotent; safe on a partly started set."""
        await self.shop.stop()
        await self.control.stop()
        await self.dns.stop()
