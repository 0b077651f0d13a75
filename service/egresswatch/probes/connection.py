"""The connection the TLS and HTTP steps talk on: TCP to an IP (or to the proxy, then CONNECT),
or the round's own connection from tcp_connect (probes/handover.py); TLS started on the
established stream; each phase timed on its own, and one translation of what went wrong into a
reason, by the phase it went wrong in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from egresswatch.addresses import ProxyRoute
from egresswatch.evidence import TlsEvidence
from egresswatch.model import Reason
from egresswatch.probes.base import ms, reason_for_exception
from egresswatch.probes.handover import Handover
from egresswatch.probes.proxy import (
    ClosedBeforeAnswer,
    HttpProtocolError,
    TunnelAnswer,
    open_tunnel,
)

_CLOSE_GRACE_S = 0.5  # a peer that does not finish the TLS close in time is cut off
_PHASE_NAMES = {
    "tcp": "TCP connect",
    "proxy": "CONNECT through the proxy",
    "tls": "TLS handshake",
    "http": "HTTP exchange",
}


@dataclass
class Phases:
    """Timings of one connection, and the phase in progress (to name what failed)."""

    current: str = "tcp"  # tcp, proxy, tls, http
    tcp_s: float | None = None
    proxy_s: float | None = None
    tls_s: float | None = None
    http_s: float | None = None
    # Phases done by earlier steps on the connection this one adopted (their time, summed).
    earlier_s: float = 0.0
    adopted: bool = False  # this connection is the one tcp_connect handed over

    def cut(self, exc: BaseException) -> str | None:
        """How the peer cut the handed-over connection in the phase after its connect: reset
        (a RST), closed (a FIN before any answer), or None (anything else, or not handed over)."""
        if not self.adopted or self.current not in ("tls", "http"):
            return None
        if _reset_by_peer(exc) or isinstance(exc, BrokenPipeError):
            return "reset"
        if isinstance(exc, ConnectionResetError | ClosedBeforeAnswer):
            return "closed"  # asyncio's "connection lost" (no errno) is a FIN in a handshake
        return None

    @contextlib.contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        """Time one phase; on failure its time is the time until it failed.

        The time is taken when the phase ends, before any cleanup, so closing a connection
        never counts in it. `current` stays on a failed phase so the failure can be named.
        """
        self.current = phase
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, f"{phase}_s", time.perf_counter() - started)

    def reason_for(self, exc: BaseException) -> Reason:
        """What an exception means in the phase it happened in."""
        if self.current == "tcp":
            return reason_for_exception(exc, timeout=Reason.CONN_TIMEOUT)
        if isinstance(exc, HttpProtocolError):
            return Reason.PROXY_ERROR if self.current == "proxy" else Reason.HTTP_PROTOCOL
        if self.current == "tls" and _reset_by_peer(exc):
            # Azure Firewall and SNI filters refuse by resetting right after the ClientHello.
            return Reason.FIREWALL_DENIED
        if self.current == "tls" and isinstance(exc, ConnectionResetError):
            # asyncio's "connection lost" (errno None): the peer closed without a ServerHello.
            return Reason.TLS_HANDSHAKE_FAILED
        return reason_for_exception(exc)

    def name(self) -> str:
        """The phase in progress, in words for a `detail` line."""
        return _PHASE_NAMES.get(self.current, self.current)

    def timed(self, evidence: TlsEvidence) -> TlsEvidence:
        """`evidence` with this connection's phase timings, in ms."""
        return replace(evidence, **self.timings())

    def timings(self) -> dict[str, Any]:
        """This connection's phase timings, in ms, as TlsEvidence fields."""
        return {
            "tcp_ms": _ms(self.tcp_s),
            "proxy_connect_ms": _ms(self.proxy_s),
            "tls_ms": _ms(self.tls_s),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else ms(seconds)


def _reset_by_peer(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionResetError) and exc.errno == errno.ECONNRESET


@dataclass
class Dialed:
    """An open stream to the endpoint (tunnelled when `tunnel` is set), or a refused tunnel."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tunnel: TunnelAnswer | None = None

    @property
    def refusal(self) -> TunnelAnswer | None:
        """The proxy's answer when it refused the CONNECT, else None."""
        return self.tunnel if self.tunnel is not None and self.tunnel.refusal else None


async def dial(
    address: str, port: int, proxy: ProxyRoute | None, phases: Phases, timeout_s: float | None
) -> Dialed:
    """TCP to `address:port`, or to the proxy and CONNECT to `address:port` through it.

    Raises what connecting raises; a refused CONNECT is returned (see `refusal`), not raised.
    """
    host, tcp_port = (proxy.host, proxy.port) if proxy else (address, port)
    with phases.timing("tcp"):
        reader, writer = await asyncio.open_connection(host, tcp_port)
    if proxy is None:
        return Dialed(reader, writer)
    try:
        with phases.timing("proxy"):
            answer = await open_tunnel(reader, writer, address, port, proxy, timeout_s)
    except BaseException:
        writer.transport.abort()
        raise
    return Dialed(reader, writer, answer)


async def adopt(sock: socket.socket, connect_s: float | None, phases: Phases) -> Dialed:
    """The connection tcp_connect made, as streams; its connect time is the TCP phase's."""
    phases.tcp_s = connect_s
    phases.earlier_s = connect_s or 0.0
    phases.adopted = True
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    return Dialed(reader, writer)


async def dial_or_adopt(
    address: str,
    port: int,
    proxy: ProxyRoute | None,
    phases: Phases,
    handover: Handover | None,
) -> Dialed:
    """The round's connection when it has one (direct targets only), else a new one (`dial`)."""
    sock = handover.take_socket() if handover is not None and proxy is None else None
    if sock is not None:
        assert handover is not None
        return await adopt(sock, handover.connect_s, phases)
    return await dial(address, port, proxy, phases, None)


async def start_tls(
    dialed: Dialed, context: ssl.SSLContext, server_name: str, phases: Phases
) -> ssl.SSLObject:
    """TLS on the open stream with SNI `server_name`; returns the session's SSL object."""
    with phases.timing("tls"):
        await dialed.writer.start_tls(context, server_hostname=server_name)
    ssl_object = dialed.writer.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        raise ssl.SSLError("no TLS session after the handshake")
    return ssl_object


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    """Close politely, but never wait on the peer for more than a moment."""
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_GRACE_S):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        writer.transport.abort()
