"""The demo's DNS server: authoritative for one zone, on 127.0.0.1, UDP and TCP on one port.

Runs in the caller's event loop (no threads), so it stops at once. Each name in the zone
either has an A record or does not exist (NXDOMAIN), switchable at runtime; names outside the
zone are REFUSED, as an authoritative server that is not a resolver answers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import cast

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSLabel, DNSRecord

HOST = "127.0.0.1"
_TTL = 1  # answers go stale at once: a switched answer is what the next round sees
_READ_S = 5.0  # a TCP client that sends nothing is dropped after this
_PORT_ATTEMPTS = 50  # bound on the search for a port free for both UDP and TCP


class DemoDns:
    """`await DemoDns(zone).start()`, then `answer(name, ip)` / `nxdomain(name)`, `stop()`."""

    def __init__(self, zone: str) -> None:
        self.zone = DNSLabel(zone)
        self.port = 0
        self._records: dict[str, str] = {}  # absolute lower-case name -> IPv4 address
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def answer(self, name: str, address: str) -> None:
        """`name` exists from now on, with one A record."""
        self._records[_key(name)] = address

    def nxdomain(self, name: str) -> None:
        """`name` does not exist from now on."""
        self._records.pop(_key(name), None)

    async def start(self) -> DemoDns:
        """Listen on an ephemeral port of 127.0.0.1, the same number for UDP and TCP."""
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for _ in range(_PORT_ATTEMPTS):
            udp, _protocol = await loop.create_datagram_endpoint(
                lambda: _Udp(self.reply), local_addr=(HOST, 0)
            )
            port = int(udp.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, HOST, port)
            except OSError as exc:  # the UDP port is taken for TCP: try another
                udp.close()
                last = exc
                continue
            self._udp, self.port = udp, port
            return self
        raise OSError(f"no loopback port free for both UDP and TCP: {last}")

    async def stop(self) -> None:
        """Stop listening and cut open TCP connections. Idempotent."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None

    def reply(self, data: bytes) -> bytes | None:
        """The reply to one DNS message, or None to send nothing (it was not a query)."""
        try:
            request = DNSRecord.parse(data)
        except Exception:  # dnslib raises several kinds for junk; junk gets no answer
            return None
        if request.header.qr or not request.questions:
            return None
        qname, qtype = request.q.qname, request.q.qtype
        reply = request.reply(ra=0, aa=1)
        if not qname.matchSuffix(self.zone):
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return bytes(reply.pack())
        address = self._records.get(_key(str(qname)))
        if address is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=_TTL))
        if not reply.rr:  # NXDOMAIN or NODATA: the SOA says for how long that holds
            reply.add_auth(self._soa())
        return bytes(reply.pack())

    def _soa(self) -> RR:
        zone = str(self.zone)
        rdata = SOA(f"ns.{zone}", f"hostmaster.{zone}", (1, 60, 60, 60, _TTL))
        return RR(self.zone, QTYPE.SOA, rdata=rdata, ttl=_TTL)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Length-prefixed messages (RFC 1035 4.2.2) until the client closes."""
        self._writers.add(writer)
        try:
            while True:
                async with asyncio.timeout(_READ_S):
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(size)
                answer = self.reply(data)
                if answer is None:
                    break
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or went quiet: nothing to report in a demo
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, reply: Callable[[bytes], bytes | None]) -> None:
        self._reply = reply
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Typed as the base class by asyncio; a datagram endpoint hands its datagram transport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        answer = self._reply(data)
        if answer is not None and self._transport is not None:
            with contextlib.suppress(OSError):  # the asker's port is gone: nothing to do
                self._transport.sendto(answer, addr)


def _key(name: str) -> str:
    text = name.lower()
    return text if text.endswith(".") else f"{text}."
