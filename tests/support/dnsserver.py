"""A real DNS server for tests: dnslib's DNSServer on 127.0.0.1, UDP and TCP on one port.

Behaviour is set per name at runtime, and every query received is logged, so a test can
assert exactly what a resolver asked and in which order:

    server.answer("web.example.", a=["192.0.2.1"], aaaa=["2001:db8::1"])
    server.cname("www.example.", "web.example.")
    server.nxdomain("gone.example.")     # also the default for names not configured
    server.rcode("bad.example.", "SERVFAIL")   # or REFUSED, or any rcode name
    server.nodata("empty.example.")      # NOERROR, no records
    server.silence("slow.example.")      # no reply (UDP); closes without one (TCP)
    server.truncate_udp("big.example.")  # TC over UDP; the full answer over TCP only
    server.malformed("junk.example.")    # our id followed by garbage
    server.wrong_id("odd.example.", a=[...])  # a good answer under another query id
    server.queries  # [Query(name="web.example.", qtype="A", proto="udp"), ...]

Use the fixtures `dns_server` (one started server) or `make_dns_server` (a factory for several),
imported explicitly by the test module; servers are stopped at teardown.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, A, DNSError, DNSLabel, DNSRecord
from dnslib.server import DNSHandler, DNSLogger, DNSServer

from egresswatch.addresses import Nameserver

_MAX_CHAIN = 8  # CNAME hops the server follows when building an answer
_PORT_ATTEMPTS = 50  # bound on the search for a port free for both UDP and TCP
_POLL_S = 0.02  # serve_forever's shutdown poll (dnslib's start_thread keeps 0.5 s: slow teardown)


@dataclass(frozen=True)
class Query:
    """One query as the server received it: absolute lower-case name, type name, transport."""

    name: str
    qtype: str
    proto: str


@dataclass(frozen=True)
class Rule:
    """How the server treats one name."""

    rcode: str = "NOERROR"
    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()
    cname: str | None = None
    silent: bool = False
    truncate_udp: bool = False
    malformed: bool = False
    wrong_id: bool = False


class _Drop(DNSError):  # type: ignore[misc]  # dnslib is untyped
    """Raised to send no reply: dnslib's handler swallows DNSError without answering."""


@dataclass
class Zone:
    """The server's configurable behaviour and its query log; safe across server threads."""

    default: Rule = field(default_factory=lambda: Rule(rcode="NXDOMAIN"))
    ttl: int = 30  # of every record served
    rules: dict[str, Rule] = field(default_factory=dict)
    queries: list[Query] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, name: str, rule: Rule) -> None:
        with self.lock:
            self.rules[_key(name)] = rule

    def rule(self, name: str) -> Rule:
        with self.lock:
            return self.rules.get(_key(name), self.default)

    def reply(self, data: bytes, proto: str) -> bytes:
        """The bytes to send back for request `data`; raises _Drop for no reply."""
        request = DNSRecord.parse(data)
        qname, qtype = str(request.q.qname), QTYPE.get(request.q.qtype)
        with self.lock:
            self.queries.append(Query(_key(qname), str(qtype), proto))
        rule = self.rule(qname)
        if rule.silent:
            raise _Drop("silent by rule")
        if rule.malformed:
            return data[:2] + b"\x81\x80\x00\x01\xff\xff garbage"  # our id, counts that lie
        reply = self._answer(request, rule)
        if rule.wrong_id:  # a stray datagram: right server and question, someone else's id
            reply.header.id = (request.header.id + 1) % 0x10000
        if rule.truncate_udp and proto == "udp":
            reply.rr = []  # like a real server: header and question, TC set, no records
            reply.header.tc = 1
        return bytes(reply.pack())

    def _answer(self, request: DNSRecord, rule: Rule) -> DNSRecord:
        """Build the reply a recursive resolver would give, following CNAMEs in this zone."""
        reply = request.reply()
        owner, qtype = request.q.qname, request.q.qtype
        for _ in range(_MAX_CHAIN):
            if rule.cname is None:
                break
            reply.add_answer(RR(owner, QTYPE.CNAME, rdata=CNAME(rule.cname), ttl=self.ttl))
            owner = DNSLabel(rule.cname)
            rule = self.rule(rule.cname)
        reply.header.rcode = getattr(RCODE, rule.rcode)
        if qtype == QTYPE.A:
            reply.rr.extend(RR(owner, QTYPE.A, rdata=A(ip), ttl=self.ttl) for ip in rule.a)
        elif qtype == QTYPE.AAAA:
            reply.rr.extend(RR(owner, QTYPE.AAAA, rdata=AAAA(ip), ttl=self.ttl) for ip in rule.aaaa)
        return reply


class _Handler(DNSHandler):  # type: ignore[misc]  # dnslib is untyped
    """dnslib's handler (UDP and TCP framing), with our zone deciding the reply bytes."""

    def get_reply(self, data: bytes) -> bytes:
        zone: Zone = self.server.resolver
        return zone.reply(data, self.protocol)


class TestDNSServer:
    """A started server; configure names with the methods below, read `queries`."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, ttl: int = 30) -> None:
        """Serve on `host`:`port` (0: a free port, the same for UDP and TCP)."""
        self.zone = Zone(ttl=ttl)
        self._udp, self._tcp = _bind_pair(self.zone, host, port)
        self.host = host
        self.port: int = self._udp.server.server_address[1]
        self._threads = [
            threading.Thread(
                target=server.server.serve_forever,
                kwargs={"poll_interval": _POLL_S},
                name=f"test-dns-{proto}-{self.port}",
                daemon=True,
            )
            for proto, server in (("udp", self._udp), ("tcp", self._tcp))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def nameserver(self) -> Nameserver:
        return Nameserver(self.host, self.port)

    @property
    def queries(self) -> list[Query]:
        with self.zone.lock:
            return list(self.zone.queries)

    def names_asked(self, qtype: str = "A") -> list[str]:
        """The names asked for `qtype`, in the order received."""
        return [q.name for q in self.queries if q.qtype == qtype]

    def answer(self, name: str, *, a: Sequence[str] = (), aaaa: Sequence[str] = ()) -> None:
        self.zone.set(name, Rule(a=tuple(a), aaaa=tuple(aaaa)))

    def cname(self, name: str, target: str) -> None:
        self.zone.set(name, Rule(cname=target))

    def nxdomain(self, name: str) -> None:
        self.zone.set(name, Rule(rcode="NXDOMAIN"))

    def nodata(self, name: str) -> None:
        self.zone.set(name, Rule())

    def rcode(self, name: str, rcode: str) -> None:
        self.zone.set(name, Rule(rcode=rcode))

    def silence(self, name: str) -> None:
        self.zone.set(name, Rule(silent=True))

    def truncate_udp(self, name: str, *, a: Sequence[str] = ()) -> None:
        self.zone.set(name, Rule(a=tuple(a), truncate_udp=True))

    def malformed(self, name: str) -> None:
        self.zone.set(name, Rule(malformed=True))

    def wrong_id(self, name: str, *, a: Sequence[str] = ()) -> None:
        self.zone.set(name, Rule(a=tuple(a), wrong_id=True))

    def set_default(self, rule: Rule) -> None:
        """How names without a rule are treated (NXDOMAIN unless changed)."""
        with self.zone.lock:
            self.zone.default = rule

    def stop(self) -> None:
        for server in (self._udp, self._tcp):
            server.server.shutdown()  # returns within _POLL_S: serve_forever polls that often
            server.server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)


def _bind_pair(zone: Zone, host: str, port: int) -> tuple[DNSServer, DNSServer]:
    """Bind UDP on `port` (0: an ephemeral one), then TCP on the same one; with an ephemeral
    port, retry if TCP's is taken."""
    logger = DNSLogger(logf=lambda _message: None)
    last_error: OSError | None = None
    for _ in range(1 if port else _PORT_ATTEMPTS):
        udp = DNSServer(zone, host, port, tcp=False, logger=logger, handler=_Handler)
        bound = udp.server.server_address[1]
        try:
            tcp = DNSServer(zone, host, bound, tcp=True, logger=logger, handler=_Handler)
        except OSError as exc:
            udp.server.server_close()
            last_error = exc
            continue
        return udp, tcp
    raise RuntimeError(f"no port free for both UDP and TCP after {_PORT_ATTEMPTS} tries") from (
        last_error
    )


def closed_port() -> int:
    """A loopback port nobody listens on (UDP), for 'port unreachable' tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _key(name: str) -> str:
    text = str(name).lower()
    return text if text.endswith(".") else f"{text}."


@pytest.fixture
def make_dns_server() -> Iterator[Callable[[], TestDNSServer]]:
    """A factory of started servers; all of them are stopped at teardown."""
    started: list[TestDNSServer] = []

    def make() -> TestDNSServer:
        server = TestDNSServer()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def dns_server() -> Iterator[TestDNSServer]:
    """One started server, stopped at teardown."""
    server = TestDNSServer()
    yield server
    server.stop()


__all__ = ["Query", "Rule", "TestDNSServer", "closed_port", "dns_server", "make_dns_server"]
