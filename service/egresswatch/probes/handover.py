"""One round's connection, handed from step to step: one connection per round, as curl does.

curl makes one connection and times its phases apart (time_connect, time_appconnect,
time_starttransfer). A round does the same for a direct target: `tcp_connect` leaves the socket
it connected open here, `tls_handshake` starts TLS on it and leaves the TLS stream here, and
`http_response` asks on whatever it finds. Each step still reports its own phase's time and its
own reason. Steps that need a connection of their own still dial one: the last-good-address
retry, the re-fetch of a certificate that failed verification, and everything through a proxy.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from egresswatch.model import Step


@dataclass(frozen=True)
class Cut:
    """The round's connection, used by `step` right after tcp_connect handed it over, was cut
    by the peer: `how` is reset (a RST) or closed (a FIN before any answer)."""

    step: Step
    how: str


@dataclass
class Handover:
    """What the round's connection is now: a connected socket (nothing sent yet), a TLS stream
    after the handshake, or nothing (taken, never made, or closed). The round owns it and
    calls `close` when the round ends, whatever the steps did."""

    sock: socket.socket | None = None
    connect_s: float | None = None  # the TCP connect's time (curl's time_connect)
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    tls_s: float | None = None  # the TLS handshake's time on that connection
    # Set by the step that met a reset or close on the handed-over socket: the round then
    # tells an endpoint that resets whatever is sent from a peer reacting to what was sent
    # (probes/resetcheck.py), since tcp_connect skipped its grace read.
    cut: Cut | None = None

    def keep_socket(self, sock: socket.socket, connect_s: float) -> None:
        """tcp_connect's connection, left open for the next step."""
        self.close()
        self.sock, self.connect_s = sock, connect_s

    def take_socket(self) -> socket.socket | None:
        """The connected socket (the taker owns it from now), or None."""
        sock, self.sock = self.sock, None
        return sock

    def keep_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls_s: float | None
    ) -> None:
        """The TLS stream after a good handshake, left open for http_response."""
        self.close()
        self.stream, self.tls_s = (reader, writer), tls_s

    def take_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The TLS stream (the taker owns it from now), or None."""
        stream, self.stream = self.stream, None
        return stream

    def note_cut(self, step: Step, how: str | None) -> None:
        """`step` met `how` (reset, closed; None: nothing of the kind) on the handed-over socket."""
        if how is not None and self.cut is None:
            self.cut = Cut(step, how)

    def close(self) -> None:
        """Drop whatever is still held, at once (a round that ended has nothing more to say)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.stream is not None:
            self.stream[1].transport.abort()
            self.stream = None
