"""A minimal DNS stub exchange: one question, one server, one try, over UDP or TCP.

dnslib packs and parses; asyncio carries the bytes. The caller (probes/dns.py) owns the
policy: which names, which servers, how many tries, and what the answers mean for the step.

Contract of `ask_udp` / `ask_tcp`: return an `Answer` for a reply that belongs to the query,
whatever its rcode; raise `TimeoutError` when none came in time, `OSError` for a socket error
(e.g. ICMP port unreachable surfaces as ConnectionRefusedError on the connected UDP socket), and
`MalformedReply` for a reply that carries our id but cannot be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import socket

from dnslib import QTYPE, DNSLabel, DNSQuestion, DNSRecord

from egresswatch.addresses import Nameserver
from egresswatch.probes.dnswire import Answer, Query, Uncommon, rcode_name, read_common
from egresswatch.probes.dnswire import query as wire_query

__all__ = [
    "Answer",
    "MalformedReply",
    "Query",
    "SharedUdp",
    "ask_tcp",
    "ask_udp",
    "make_query",
    "read_reply",
]

QTYPES: dict[str, int] = {"A": QTYPE.A, "AAAA": QTYPE.AAAA}
_HEADER_LEN = 12
_MAX_NAME_LEN = 253  # presentation form without the trailing dot (RFC 1035 §2.3.4)
_MAX_UDP = 65535  # what one datagram can hold; EDNS answers may pass 512 bytes
# Datagrams on the connected socket that are not our answer (a late reply to an earlier query
# cannot reach a fresh socket, so more than this is a server gone wrong, not stray traffic).
_MAX_STRAY = 64


class MalformedReply(Exception):
    """A reply carrying our query id that cannot be parsed or does not fit the question."""


@functools.lru_cache(maxsize=4096)  # a pure answer about a name; rounds ask the same few names
def is_valid_name(name: str) -> bool:
    """True when `name` (absolute or not) can be sent as a DNS question."""
    bare = name[:-1] if name.endswith(".") else name
    if not bare or len(bare) > _MAX_NAME_LEN:
        return False
    try:
        DNSRecord.question(name).pack()
    except Exception:  # dnslib raises several kinds (UnicodeError, DNSLabelError...) for bad labels
        return False
    return True


def make_query(qname: str, qtype: str) -> Query:
    """A recursive query for (qname, qtype) with an unpredictable id (spoofing defence)."""
    return wire_query(qname, qtype, secrets.randbelow(0x10000))


async def ask_udp(query: Query, server: Nameserver, timeout_s: float) -> Answer:
    """Send `query` once over UDP from a fresh socket and wait for its reply.

    The socket is connected to the server, so the kernel drops datagrams from anyone else;
    datagrams with another id or question are ignored and we keep waiting, as libc does.
    A bare non-blocking socket and `sock_recv`, not a datagram transport: the transport and
    its protocol cost a third of a by-name round's DNS (docs/performance.md).
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        async with asyncio.timeout(timeout_s):
            sock.connect((server.host, server.port))  # a UDP connect sends nothing
            await loop.sock_sendall(sock, query.wire)
            for _ in range(_MAX_STRAY):
                answer = read_reply(query, await loop.sock_recv(sock, _MAX_UDP))
                if answer is not None:
                    return answer
            raise MalformedReply(f"{_MAX_STRAY} datagrams that do not answer the question")


class SharedUdp:
    """One UDP socket to one server for the questions a search asks it at once (A and AAAA,
    as glibc's getaddrinfo sends them from one socket), opened at the first `ask`.

    Each question keeps what `ask_udp` gives it: its own unpredictable id, its own timeout and
    outcome; the socket's fresh random port is shared by the two, as with glibc. A reply goes to
    the question whose id and question it answers; a socket error (an ICMP port unreachable
    reported on the connected socket) goes to every question still waiting, since all were
    sent to the same server and port. The owner calls `close` once its questions are settled.
    It saves a by-name round two sockets and their epoll registrations (docs/performance.md).
    """

    def __init__(self, server: Nameserver) -> None:
        self.server = server
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[tuple[Query, asyncio.Future[Answer]]] = []
        self._strays = 0

    async def ask(self, query: Query, timeout_s: float) -> Answer:
        """Send `query` on the shared socket and wait for its reply; raises as `ask_udp` does."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        entry = (query, future)
        async with asyncio.timeout(timeout_s):
            sock = self._sock or self._open(loop)
            self._waiting.append(entry)
            try:
                try:
                    await loop.sock_sendall(sock, query.wire)
                except OSError as exc:  # a pending ICMP error of the other question's send
                    self._fail(exc)
                return await future
            finally:
                self._waiting.remove(entry)
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved, even when a timeout came first

    def close(self) -> None:
        """Stop reading and close the socket; questions still waiting time out as theirs."""
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None

    def _open(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.server.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((self.server.host, self.server.port))  # a UDP connect sends nothing
            loop.add_reader(sock.fileno(), self._readable, sock)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        return sock

    def _readable(self, sock: socket.socket) -> None:
        # One datagram a call: epoll is level-triggered, so the loop calls again while more
        # waits, and no call ends in a failed recv and its exception.
        try:
            data = sock.recv(_MAX_UDP)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # ConnectionRefusedError and the like: the server's port
            self._fail(exc)
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        for query, future in self._waiting:
            if future.done():
                continue
            try:
                answer = read_reply(query, data)
            except MalformedReply as exc:
                future.set_exception(exc)
                return
            if answer is not None:
                future.set_result(answer)
                return
        self._strays += 1
        if self._strays >= _MAX_STRAY:
            self._fail(MalformedReply(f"{_MAX_STRAY} datagrams that do not answer the question"))

    def _fail(self, exc: Exception) -> None:
        for _query, future in self._waiting:
            if not future.done():
                future.set_exception(exc)


async def ask_tcp(query: Query, server: Nameserver, timeout_s: float) -> Answer:
    """Send `query` once over TCP (RFC 1035 §4.2.2 length framing) and read its reply."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            packet = query.wire
            writer.write(len(packet).to_bytes(2, "big") + packet)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            data = await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("server closed the TCP connection mid-answer") from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    answer = read_reply(query, data)
    if answer is None:  # one connection, one question: a mismatch here is not stray traffic
        raise MalformedReply("TCP reply does not match the question")
    return answer


def read_reply(query: Query, data: bytes) -> Answer | None:
    """The answer in `data` if it replies to `query`; None for stray traffic.

    Stray: too short for a header, another id, not a response, or another question. A reply
    with our id that dnslib cannot parse raises MalformedReply: it is the server's answer, and
    a broken one. A reply without a question section is accepted (some servers send REFUSED or
    a truncated header that way); the id already ties it to our query. The common shape of a
    reply is read by `dnswire.read_common` (the same answer, a fraction of the CPU).
    """
    if len(data) < _HEADER_LEN or data[:2] != query.wire[:2]:
        return None
    common = read_common(query, data)
    if not isinstance(common, Uncommon):
        return common
    return read_with_dnslib(query, data)


def read_with_dnslib(query: Query, data: bytes) -> Answer | None:
    """`read_reply` by dnslib's parse alone, for a reply with our id: every shape, the
    reference `dnswire.read_common` is checked against."""
    try:
        reply = DNSRecord.parse(data)
    except Exception as exc:  # dnslib raises DNSError and others on garbage; all mean the same
        raise MalformedReply(f"unreadable reply: {type(exc).__name__}") from None
    if not reply.header.qr:
        return None
    asked = DNSRecord.parse(query.wire).q
    if reply.questions and not _same_question(asked, reply.q):
        return None
    return _interpret(reply, asked.qname, asked.qtype)


def _same_question(asked: DNSQuestion, got: DNSQuestion) -> bool:
    # DNSLabel equality ignores case, as DNS names do.
    return bool(
        got.qname == asked.qname and got.qtype == asked.qtype and got.qclass == asked.qclass
    )


def _interpret(reply: DNSRecord, qname: DNSLabel, qtype: int) -> Answer:
    """Follow the CNAME chain from qname and collect the qtype records owned by its end."""
    owner = qname
    chain: list[str] = []
    seen = {str(qname).lower()}
    # Each hop consumes a distinct CNAME record, so the chain is at most as long as the answer.
    for _ in range(len(reply.rr)):
        target = next(
            (rr.rdata.label for rr in reply.rr if rr.rtype == QTYPE.CNAME and rr.rname == owner),
            None,
        )
        if target is None or str(target).lower() in seen:
            break  # end of chain, or a loop
        seen.add(str(target).lower())
        chain.append(str(target))
        owner = target
    addresses = tuple(str(rr.rdata) for rr in reply.rr if rr.rtype == qtype and rr.rname == owner)
    return Answer(
        rcode=rcode_name(int(reply.header.rcode)),
        addresses=addresses,
        cnames=tuple(chain),
        truncated=bool(reply.header.tc),
    )
