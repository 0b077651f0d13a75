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
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSLabel, DNSRecord

from egresswatch.addresses import Nameserver

QTYPES: dict[str, int] = {"A": QTYPE.A, "AAAA": QTYPE.AAAA}
_HEADER_LEN = 12
_MAX_NAME_LEN = 253  # presentation form without the trailing dot (RFC 1035 §2.3.4)
_MAX_UDP = 65535  # what one datagram can hold; EDNS answers may pass 512 bytes
# Datagrams on the connected socket that are not our answer (a late reply to an earlier query
# cannot reach a fresh socket, so more than this is a server gone wrong, not stray traffic).
_MAX_STRAY = 64


class MalformedReply(Exception):
    """A reply carrying our query id that cannot be parsed or does not fit the question."""


@dataclass(frozen=True)
class Answer:
    """What one reply said about (qname, qtype).

    `rcode` is the rcode's name ("NOERROR", "NXDOMAIN", ... or "RCODE<n>" for one dnslib does not
    know). `cnames` is the chain followed from qname in the answer section, and `addresses` are
    the records of qtype owned by the end of that chain. `truncated` means the TC bit was set:
    the complete answer must be fetched over TCP.
    """

    rcode: str
    addresses: tuple[str, ...] = ()
    cnames: tuple[str, ...] = ()
    truncated: bool = False


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


def make_query(qname: str, qtype: str) -> DNSRecord:
    """A recursive query for (qname, qtype) with an unpredictable id (spoofing defence)."""
    query = DNSRecord.question(qname, qtype)
    query.header.id = secrets.randbelow(0x10000)
    return query


async def ask_udp(query: DNSRecord, server: Nameserver, timeout_s: float) -> Answer:
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
            await loop.sock_sendall(sock, query.pack())
            for _ in range(_MAX_STRAY):
                answer = read_reply(query, await loop.sock_recv(sock, _MAX_UDP))
                if answer is not None:
                    return answer
            raise MalformedReply(f"{_MAX_STRAY} datagrams that do not answer the question")


async def ask_tcp(query: DNSRecord, server: Nameserver, timeout_s: float) -> Answer:
    """Send `query` once over TCP (RFC 1035 §4.2.2 length framing) and read its reply."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            packet = query.pack()
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


def read_reply(query: DNSRecord, data: bytes) -> Answer | None:
    """The answer in `data` if it replies to `query`; None for stray traffic.

    Stray: too short for a header, another id, not a response, or another question. A reply
    with our id that dnslib cannot parse raises MalformedReply: it is the server's answer, and
    a broken one. A reply without a question section is accepted (some servers send REFUSED or
    a truncated header that way); the id already ties it to our query.
    """
    if len(data) < _HEADER_LEN or int.from_bytes(data[:2], "big") != query.header.id:
        return None
    try:
        reply = DNSRecord.parse(data)
    except Exception as exc:  # dnslib raises DNSError and others on garbage; all mean the same
        raise MalformedReply(f"unreadable reply: {type(exc).__name__}") from None
    if not reply.header.qr:
        return None
    if reply.questions and not _same_question(query, reply):
        return None
    return _interpret(reply, query.q.qname, query.q.qtype)


def _same_question(query: DNSRecord, reply: DNSRecord) -> bool:
    asked, got = query.q, reply.q
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
    code = int(reply.header.rcode)
    return Answer(
        rcode=RCODE.forward.get(code, f"RCODE{code}"),
        addresses=addresses,
        cnames=tuple(chain),
        truncated=bool(reply.header.tc),
    )
