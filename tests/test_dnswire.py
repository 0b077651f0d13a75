"""The DNS client's fast paths give what dnslib gave: the same query bytes, the same answer
read from every reply (or the same MalformedReply), and A and AAAA's first tries on one socket.

The reference is dnslib: `dnsclient.read_with_dnslib` is the code every reply went through
before `dnswire.read_common` (docs/performance.md, "The DNS client on a by-name round").
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from dnslib import AAAA, CNAME, MX, QTYPE, RR, TXT, A, DNSLabel, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egresswatch.addresses import Nameserver
from egresswatch.evidence import DnsEvidence
from egresswatch.model import Status
from egresswatch.probes.dns import dns_upstream
from egresswatch.probes.dnsclient import (
    Answer,
    MalformedReply,
    make_query,
    read_reply,
    read_with_dnslib,
)
from egresswatch.probes.dnswire import UNCOMMON, query, read_common
from tests.support.evidence import typed

NAMES = ["web.example.", "WeB.Example.", "cdn.example.net.", "a.b.c.d.", "x-1_y.test."]
ADDRESSES_4 = ["192.0.2.1", "10.0.0.10", "0.0.0.0", "255.255.255.255"]
ADDRESSES_6 = ["2001:db8::1", "::", "1234:0:0:5678::1", "::ffff:c000:201", "fe80::1:0:0:2"]


def outcome(read: object, sent: object, data: bytes) -> object:
    """What a reader made of `data`: its answer, None, or the MalformedReply."""
    try:
        return read(sent, data)  # type: ignore[operator]
    except MalformedReply:
        return "malformed"


@st.composite
def replies(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(name, qtype, reply bytes): dnslib-built replies of the shapes resolvers send, and some
    they should not (other types and classes, other sections, another question, a query)."""
    name = draw(st.sampled_from(NAMES))
    qtype = draw(st.sampled_from(["A", "AAAA"]))
    reply = DNSRecord.parse(query(name, qtype, 0).wire).reply()  # dnslib's id draw is random
    reply.header.rcode = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5, 9, 15]))
    reply.header.tc = draw(st.sampled_from([0, 0, 0, 1]))
    owner = name.lower() if draw(st.booleans()) else name.upper()
    for _ in range(draw(st.integers(0, 3))):  # a CNAME chain, loops and case changes allowed
        target = draw(st.sampled_from([*NAMES, "alias.example."]))
        reply.add_answer(RR(owner, QTYPE.CNAME, rdata=CNAME(target), ttl=30))
        owner = target if draw(st.booleans()) else target.swapcase()
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["A", "AAAA", "MX", "TXT", "A-chaos"]))
        where = owner if draw(st.integers(0, 3)) else draw(st.sampled_from(NAMES))
        if kind == "A":
            rr = RR(where, QTYPE.A, rdata=A(draw(st.sampled_from(ADDRESSES_4))), ttl=30)
        elif kind == "AAAA":
            rr = RR(where, QTYPE.AAAA, rdata=AAAA(draw(st.sampled_from(ADDRESSES_6))), ttl=30)
        elif kind == "MX":
            rr = RR(where, QTYPE.MX, rdata=MX("mail.example."), ttl=30)
        elif kind == "TXT":
            rr = RR(where, QTYPE.TXT, rdata=TXT("v=x"), ttl=30)
        else:
            rr = RR(where, QTYPE.A, rclass=3, rdata=A("192.0.2.9"), ttl=30)
        reply.add_answer(rr)
    if draw(st.integers(0, 4)) == 0:
        reply.add_auth(RR("example.", QTYPE.NS, rdata=CNAME("ns.example."), ttl=30))
    if draw(st.integers(0, 5)) == 0:
        reply.questions = []  # some servers answer REFUSED without the question
    if draw(st.integers(0, 5)) == 0:
        reply.q.qname = DNSLabel("other.example.")
    if draw(st.integers(0, 9)) == 0:
        reply.header.qr = 0
    return name, qtype, bytes(reply.pack())


@given(replies(), st.integers(0, 0xFFFF))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_reply_reads_as_dnslib_reads_it(case: tuple[str, str, bytes], qid: int) -> None:
    name, qtype, data = case
    sent = query(name, qtype, qid)
    data = sent.wire[:2] + data[2:]
    assert outcome(read_reply, sent, data) == outcome(read_with_dnslib, sent, data)


@given(replies(), st.data())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_damaged_reply_reads_as_dnslib_reads_it(
    case: tuple[str, str, bytes], data: st.DataObject
) -> None:
    """Bytes changed anywhere after the id (counts, lengths, pointers, labels), or cut short."""
    name, qtype, packet = case
    sent = query(name, qtype, 0x1234)
    damaged = bytearray(sent.wire[:2] + packet[2:])
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.integers(2, len(damaged) - 1))
        damaged[where] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(12, len(damaged)))
    reply = bytes(damaged[:cut])
    assert outcome(read_reply, sent, reply) == outcome(read_with_dnslib, sent, reply)


def test_common_replies_take_the_fast_path() -> None:
    """An answer, a CNAME chain compressed by dnslib, a NODATA and an NXDOMAIN without
    authority: read without dnslib, and read right."""
    sent = query("web.example.", "A", 7)
    reply = DNSRecord.parse(sent.wire).reply()
    reply.add_answer(RR("WEB.example.", QTYPE.CNAME, rdata=CNAME("cdn.example."), ttl=5))
    reply.add_answer(RR("cdn.example.", QTYPE.A, rdata=A("192.0.2.7"), ttl=5))
    assert read_common(sent, bytes(reply.pack())) == Answer(
        "NOERROR", ("192.0.2.7",), ("cdn.example.",)
    )
    empty = DNSRecord.parse(sent.wire).reply()
    assert read_common(sent, bytes(empty.pack())) == Answer("NOERROR")
    empty.header.rcode = 3
    assert read_common(sent, bytes(empty.pack())) == Answer("NXDOMAIN")
    empty.add_auth(RR("example.", QTYPE.NS, rdata=CNAME("ns.example."), ttl=5))
    assert read_common(sent, bytes(empty.pack())) is UNCOMMON  # left to dnslib


def _with_answer_name(sent_wire: bytes, name: bytes) -> bytes:
    """A reply to `sent_wire` with one A record whose owner is the raw `name` bytes."""
    header = sent_wire[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
    record = name + b"\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\xc0\x00\x02\x01"
    return header + sent_wire[12:] + record


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"\xc0\x0c", Answer("NOERROR", ("192.0.2.1",))),  # to the question: the common case
        (b"\xc0\x1d", "malformed"),  # to itself
        (b"\xc0\x30", "malformed"),  # forward
        (b"\x01a\xc0\x1d", "malformed"),  # to its own first label: a loop
        (b"\x03WEB\xc0\x10", Answer("NOERROR", ("192.0.2.1",))),  # a label, then a suffix
        (b"\x03w b\xc0\x10", Answer("NOERROR")),  # a byte dnslib escapes: left to dnslib
        (b"\x45" + b"x" * 69 + b"\x00", Answer("NOERROR")),  # a label past 63: to dnslib
    ],
)
def test_names_with_pointers_read_as_dnslib_reads_them(name: bytes, expected: object) -> None:
    """Compression pointers must go backwards (else no reader may loop); what dnslib refuses
    is malformed on both paths, and nothing hangs."""
    sent = query("web.example.", "A", 0x4242)
    reply = _with_answer_name(sent.wire, name)
    assert outcome(read_reply, sent, reply) == outcome(read_with_dnslib, sent, reply) == expected


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("qtype", ["A", "AAAA"])
def test_a_query_is_dnslibs_packet_with_our_id(name: str, qtype: str) -> None:
    sent = make_query(name, qtype)
    expected = DNSRecord.question(name, qtype)
    expected.header.id = sent.id
    assert sent.wire == bytes(expected.pack())
    assert DNSRecord.parse(sent.wire).header.rd == 1


class _PortLoggingServer:
    """A UDP DNS server on 127.0.0.1 that answers every A and AAAA question for any name and
    logs (source port, query id, type) of each; stops after `limit` datagrams or at stop()."""

    def __init__(self, limit: int = 32) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.seen: list[tuple[int, int, str]] = []
        self._limit = limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-port-log", daemon=True)
        self._thread.start()

    @property
    def nameserver(self) -> Nameserver:
        return Nameserver("127.0.0.1", self.sock.getsockname()[1])

    def _serve(self) -> None:
        deadline = time.monotonic() + 10
        while not self._stop.is_set() and len(self.seen) < self._limit:
            if time.monotonic() > deadline:
                return
            try:
                data, (host, port) = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            request = DNSRecord.parse(data)
            qtype = str(QTYPE.get(request.q.qtype))
            self.seen.append((port, request.header.id, qtype))
            reply = request.reply()
            if qtype == "A":
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("192.0.2.5"), ttl=5))
            self.sock.sendto(reply.pack(), (host, port))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def port_logging_server() -> Iterator[_PortLoggingServer]:
    server = _PortLoggingServer()
    yield server
    server.stop()


async def test_a_and_aaaa_go_out_on_one_socket(port_logging_server: _PortLoggingServer) -> None:
    """As glibc sends them: one source port for the pair, two ids, both answered and recorded
    as two tries; the next step's pair comes from another socket."""
    server = port_logging_server.nameserver
    first = await dns_upstream("web.example", server, timeout_s=2.0)
    second = await dns_upstream("web.example", server, timeout_s=2.0)

    assert first.status is Status.OK and second.status is Status.OK
    seen = port_logging_server.seen
    assert [qtype for _, _, qtype in seen] == ["A", "AAAA", "A", "AAAA"]
    assert seen[0][0] == seen[1][0] and seen[2][0] == seen[3][0]
    assert seen[0][0] != seen[2][0]  # a fresh random port for each pair
    tries = typed(first, DnsEvidence).tried
    assert [(t.type, t.rcode, t.proto) for t in tries] == [
        ("A", "NOERROR", "udp"),
        ("AAAA", "NOERROR", "udp"),
    ]
    assert typed(first, DnsEvidence).addresses == ("192.0.2.5",)
