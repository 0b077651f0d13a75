"""Each probe step's evidence as a frozen type: what the probe wrote, read by attribute.

A probe builds one of these; the API, the database and `egresswatch check --json` carry it as
a JSON object whose keys are the field names (jsonrecord.py):

- strictly decoded at ingest (`POST /api/v1/results`): an unknown key or a wrong type is
  refused, naming the field;
- leniently decoded from rows already stored, so a row written by an older or newer
  egresswatch still reads.

A missing key takes the field's default: only the keys that identify a nested record (a DNS
try's name, a connect attempt's address, a hop's TTL) are required. Which type belongs to
which step is steps.py's business. Standard library only: the model imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from egresswatch.jsonrecord import OMITTED_BY_DEFAULT, EvidenceError, Record, json_schema

__all__ = [
    "NOT_RUN",
    "DnsEvidence",
    "DnsTry",
    "Evidence",
    "EvidenceError",
    "HttpEvidence",
    "NotRun",
    "Record",
    "ResetCheck",
    "TcpAttempt",
    "TcpEvidence",
    "TlsEvidence",
    "TraceEvidence",
    "TraceHop",
    "json_schema",
]


@dataclass(frozen=True)
class Evidence(Record):
    """The base of every step's evidence (what `StepResult.evidence` holds)."""


# --- what did not run ------------------------------------------------------------------------


@dataclass(frozen=True)
class NotRun(Evidence):
    """A step that did not judge the target (skipped, or the probe could not start): at most
    what stopped it. Every field is left out of the JSON while None, so `NotRun()` is `{}`."""

    blocked_by: str | None = field(default=None, metadata=OMITTED_BY_DEFAULT)  # a step id
    exception: str | None = field(default=None, metadata=OMITTED_BY_DEFAULT)  # the probe broke
    ca_file: str | None = field(default=None, metadata=OMITTED_BY_DEFAULT)  # did not load
    resolv_conf: str | None = field(default=None, metadata=OMITTED_BY_DEFAULT)  # unreadable


# A step that did not run and has nothing to say: one shared value (it is frozen), not one
# object a skipped step; detection keeps the latest round of every pair (issue 14).
NOT_RUN = NotRun()


# --- dns_cluster and dns_upstream ------------------------------------------------------------


@dataclass(frozen=True)
class DnsTry(Record):
    """One DNS message sent: the name and type asked, the server, and what came back.

    `rcode` is an rcode name (NOERROR, NXDOMAIN, SERVFAIL ...), TIMEOUT, MALFORMED, or a socket
    reason in capitals (CONN_REFUSED); `proto` is udp or tcp.
    """

    name: str
    type: str
    server: str
    rcode: str
    ms: float = 0.0
    proto: str = "udp"
    truncated: bool = field(default=False, metadata=OMITTED_BY_DEFAULT)
    error: str = field(default="", metadata=OMITTED_BY_DEFAULT)


@dataclass(frozen=True)
class DnsEvidence(Evidence):
    """What a resolution found (`dns_cluster` and `dns_upstream` write the same).

    `resolver` is the first nameserver, `candidates` the names in search order, `tried` every
    message in the order sent; on success `name` is the name that resolved, `addresses` its A
    and AAAA records and `cname` the chain that led there.
    """

    resolver: str | None = None
    candidates: tuple[str, ...] = ()
    tried: tuple[DnsTry, ...] = ()
    addresses: tuple[str, ...] = ()
    name: str | None = None
    cname: tuple[str, ...] = ()


# --- tcp_connect -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResetCheck(Record):
    """How a reset or close of the round's connection was told apart (probes/resetcheck.py).

    `seen_at` is the step that met it on the connection tcp_connect handed over
    (tls_handshake, http_response), `seen` what it met (reset, closed). A second connection to
    the same address then sent nothing and read for `grace_ms`: `idle` is what it got, within
    `ms`: conn_reset (reset unprompted), closed (closed unprompted), ok (it stayed up: the peer
    reacted to what was sent), or the reason its connect failed (nothing told apart).
    """

    seen_at: str
    seen: str
    idle: str
    grace_ms: float = 0.0
    ms: float = 0.0

    @property
    def unprompted_reset(self) -> bool:
        """The endpoint resets a connection whatever is sent (nothing, here)."""
        return self.idle == "conn_reset"


@dataclass(frozen=True)
class TcpAttempt(Record):
    """One connect: `outcome` is "ok" or a reason code; `icmp_from` who sent an ICMP error."""

    address: str
    outcome: str
    ms: float = 0.0
    icmp_from: str | None = None


@dataclass(frozen=True)
class TcpEvidence(Evidence):
    """`address` is the one connected (None when none was), `port` the port connected to,
    `ip_source` where the addresses came from (dns_cluster, dns_upstream, last_good, pinned,
    literal, proxy), `untried` the addresses left over. When the addresses the cluster resolver
    gave all failed and the upstream resolver answered others, one of those is tried too:
    `other_answers` (from `other_source`) says whether the other answer works.
    `reset_check`: the connection was accepted, then reset whatever was sent, as a later step
    and a second connection that sent nothing both saw (ResetCheck)."""

    address: str | None = None
    port: int | None = None
    ip_source: str | None = None
    attempts: tuple[TcpAttempt, ...] = ()
    untried: tuple[str, ...] = ()
    other_source: str | None = field(default=None, metadata=OMITTED_BY_DEFAULT)
    other_answers: tuple[TcpAttempt, ...] = field(default=(), metadata=OMITTED_BY_DEFAULT)
    reset_check: ResetCheck | None = field(default=None, metadata=OMITTED_BY_DEFAULT)

    @property
    def aimed_at(self) -> str | None:
        """The address connected to, else the first one tried."""
        if self.address is not None:
            return self.address
        return self.attempts[0].address if self.attempts else None

    @property
    def icmp_senders(self) -> list[str]:
        """Who sent the ICMP errors that ended the attempts, in attempt order, once each."""
        return list(dict.fromkeys(a.icmp_from for a in self.attempts if a.icmp_from))


# --- tls_handshake ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsEvidence(Evidence):
    """The handshake with `server_name` at `address:port` (through `via_proxy` when set): the
    session's version and cipher, the leaf's issuer, subject, not_after (RFC 3339 UTC) and
    days_left, the verification error, phase timings in ms, the proxy's status when it
    refused the CONNECT, and `reset_check` when the handshake met a reset or close right
    after the connect (ResetCheck)."""

    address: str | None = None
    port: int | None = None
    server_name: str | None = None
    via_proxy: str | None = None
    version: str | None = None
    cipher: str | None = None
    issuer: str | None = None
    subject: str | None = None
    not_after: str | None = None
    days_left: int | None = None
    verify_error: str | None = None
    tcp_ms: float | None = None
    proxy_connect_ms: float | None = None
    tls_ms: float | None = None
    proxy_status: int | None = field(default=None, metadata=OMITTED_BY_DEFAULT)
    reset_check: ResetCheck | None = field(default=None, metadata=OMITTED_BY_DEFAULT)


# --- http_response ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpEvidence(Evidence):
    """The request to `url` and its answer: `status` from whoever answered last,
    `proxy_status` the answer to CONNECT, the `server` and `location` headers, phase
    timings in ms (null for a phase not reached), and `reset_check` when a plain-HTTP exchange
    met a reset or close right after the connect (ResetCheck)."""

    url: str | None = None
    address: str | None = None
    via_proxy: str | None = None
    expected: str | None = None
    status: int | None = None
    proxy_status: int | None = None
    server: str | None = None
    location: str | None = None
    connect_ms: float | None = None
    proxy_connect_ms: float | None = None
    tls_ms: float | None = None
    ttfb_ms: float | None = None
    total_ms: float | None = None
    reset_check: ResetCheck | None = field(default=None, metadata=OMITTED_BY_DEFAULT)


# --- path_trace ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceHop(Record):
    """One TTL: who answered (None: nobody in time), `icmp` time_exceeded, unreachable or None,
    `reached` when the destination itself answered."""

    ttl: int
    address: str | None = None
    rtt_ms: float | None = None
    icmp: str | None = None
    reached: bool = False


@dataclass(frozen=True)
class TraceEvidence(Evidence):
    """The trace to `destination:port`: its hops, the last one that answered, and why it
    stopped (reached, unreachable, silent, max_hops, budget, local_error, error)."""

    destination: str | None = None
    port: int | None = None
    hops: tuple[TraceHop, ...] = ()
    last_hop: str | None = None
    reached: bool = False
    stopped: str | None = None

    @property
    def last_hop_ttl(self) -> int | None:
        """The TTL of the last hop that answered."""
        found = [hop.ttl for hop in self.hops if hop.address is not None]
        return found[-1] if found else None

    @property
    def addresses(self) -> list[str]:
        """Every hop that answered, in TTL order."""
        return [hop.address for hop in self.hops if hop.address]
