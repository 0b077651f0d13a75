"""Steps 1 and 2 of the checklist: resolve the target's name (DESIGN.md §1).

`dns_cluster` resolves the way a pod's glibc does (`nslookup host` in the pod); `dns_upstream`
asks one server directly for the absolute name (`nslookup host 168.63.129.16`). We use our own
stub client (probes/dnsclient.py) instead of the system resolver because we need the rcode of
every try, a configurable server and port, and exact timing.

The search follows glibc's res_search and res_send:

- candidate names come from `ResolvConf.candidates`; for each, A and AAAA are asked concurrently;
- each question goes to the nameservers in order, for `attempts` rounds, `timeout_s` per try,
  never past the step's budget; a truncated UDP reply is asked again over TCP, same server;
- NOERROR and NXDOMAIN settle a question. SERVFAIL, REFUSED, other rcodes, unreadable replies,
  socket errors and timeouts move to the next nameserver;
- a name with an A or AAAA record ends the search (ok). NXDOMAIN, NODATA and SERVFAIL (from
  every server) move on to the next name. When a question got nothing better than REFUSED,
  errors or silence from every server, the search stops there, as glibc's does (TRY_AGAIN).

The failing reason is the most telling one: `servfail` if any try got SERVFAIL; else, if the
search stopped early, why (`refused`, `dns_error`, a socket reason such as `conn_refused`, or
`dns_timeout`); else `nxdomain` if every name was NXDOMAIN; else `no_data`.

Probes report, they do not raise: every outcome is a StepResult.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from egresswatch.addresses import Nameserver
from egresswatch.evidence import DnsEvidence, DnsTry
from egresswatch.model import Reason, Status, Step, StepResult, is_ip_address
from egresswatch.probes import base
from egresswatch.probes.dnsclient import (
    Answer,
    MalformedReply,
    Query,
    SharedUdp,
    ask_tcp,
    ask_udp,
    is_valid_name,
    make_query,
)
from egresswatch.probes.resolvconf import ResolvConf

# Why a question got no settled answer, most telling first (see _most_telling).
_PRECEDENCE: tuple[Reason, ...] = (
    Reason.SERVFAIL,
    Reason.REFUSED,
    Reason.DNS_ERROR,
    Reason.CONN_REFUSED,
    Reason.CONN_RESET,
    Reason.NET_UNREACHABLE,
    Reason.HOST_UNREACHABLE,
    Reason.FIREWALL_DENIED,
    Reason.DNS_TIMEOUT,
)
# Name verdicts after which glibc's res_search goes on to the next candidate.
_NEXT_NAME = {Reason.NXDOMAIN, Reason.NO_DATA, Reason.SERVFAIL}
_RCODE_REASONS = {"SERVFAIL": Reason.SERVFAIL, "REFUSED": Reason.REFUSED}
_LABELS = {
    Reason.NO_DATA: "no address record (NODATA)",
    Reason.DNS_TIMEOUT: "no answer",
    Reason.DNS_ERROR: "bad answer",
    Reason.CONN_REFUSED: "connection refused",
}
_UPSTREAM_ATTEMPTS = 2  # one retransmission against a lost datagram, like nslookup


async def dns_cluster(host: str, resolv: ResolvConf, *, timeout_s: float) -> StepResult:
    """Resolve `host` through `resolv` as a pod's libc would (search list, ndots, failover).

    Returns `ok` when some candidate name has an A or AAAA record; `fail` with a DNS reason
    otherwise; `skipped` (not_applicable) for an IP literal. Takes at most about `timeout_s`.
    """
    step = Step.DNS_CLUSTER
    if is_ip_address(host):
        return base.skipped(step, Reason.NOT_APPLICABLE, f"{host} is an IP address")
    if not resolv.nameservers:
        return base.skipped(step, Reason.NOT_CONFIGURED, "no nameserver in resolv.conf")
    return await _resolve(step, resolv.candidates(host), resolv, timeout_s)


async def dns_upstream(host: str, server: Nameserver, *, timeout_s: float) -> StepResult:
    """Ask `server` directly for `host` as an absolute name: no search list, A and AAAA.

    Two tries per question, each with half of `timeout_s`; classified like `dns_cluster`.
    """
    step = Step.DNS_UPSTREAM
    if is_ip_address(host):
        return base.skipped(step, Reason.NOT_APPLICABLE, f"{host} is an IP address")
    name = host if host.endswith(".") else f"{host}."
    resolv = ResolvConf(
        nameservers=(server,),
        timeout_s=timeout_s / _UPSTREAM_ATTEMPTS,
        attempts=_UPSTREAM_ATTEMPTS,
    )
    return await _resolve(step, [name], resolv, timeout_s)


@dataclass
class _Try:
    """One message sent: filled in when its outcome is known."""

    name: str
    qtype: str
    server: Nameserver
    proto: str
    rcode: str = "TIMEOUT"  # an rcode name, TIMEOUT, MALFORMED, or a socket reason in capitals
    ms: float = 0.0
    truncated: bool = False
    error: str = ""

    def evidence(self) -> DnsTry:
        return DnsTry(
            name=self.name,
            type=self.qtype,
            server=str(self.server),
            rcode=self.rcode,
            ms=self.ms,
            proto=self.proto,
            truncated=self.truncated,
            error=self.error,
        )


@dataclass(frozen=True)
class _Lookup:
    """One question after failover: a settling answer (NOERROR/NXDOMAIN) or why there was none."""

    answer: Answer | None
    server: Nameserver | None = None
    failures: tuple[Reason, ...] = ()


@dataclass(frozen=True)
class _NameResult:
    """Both questions (A, AAAA) for one candidate name."""

    name: str
    a: _Lookup
    aaaa: _Lookup

    @property
    def winner(self) -> _Lookup | None:
        """The lookup that found addresses, A first."""
        for lookup in (self.a, self.aaaa):
            if lookup.answer is not None and lookup.answer.addresses:
                return lookup
        return None

    @property
    def verdict(self) -> Reason | None:
        """None when the name has an address; else why not."""
        if self.winner is not None:
            return None
        unsettled = [lookup for lookup in (self.a, self.aaaa) if lookup.answer is None]
        if unsettled:
            return _most_telling(r for lookup in unsettled for r in lookup.failures)
        if all(
            lk.answer is not None and lk.answer.rcode == "NXDOMAIN" for lk in (self.a, self.aaaa)
        ):
            return Reason.NXDOMAIN
        return Reason.NO_DATA


def _most_telling(reasons: Iterable[Reason]) -> Reason:
    found = set(reasons)
    return next((r for r in _PRECEDENCE if r in found), Reason.DNS_TIMEOUT)


@dataclass
class _Search:
    """One step's run: the budget, and every try in the order sent."""

    resolv: ResolvConf
    deadline: float
    tries: list[_Try] = field(default_factory=list)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    async def name(self, name: str) -> _NameResult:
        """A and AAAA concurrently, as glibc's getaddrinfo sends them: A in this task, sent
        first, and AAAA in a task of its own (one task a name, not two and a TaskGroup). Their
        first tries share one socket to the first nameserver (dnsclient.SharedUdp)."""
        first = SharedUdp(self.resolv.nameservers[0])
        aaaa = asyncio.get_running_loop().create_task(
            self.lookup(name, "AAAA", first), name=f"dns-aaaa-{name}"
        )
        try:
            a = await self.lookup(name, "A", first)
            return _NameResult(name, a, await aaaa)
        finally:
            if not aaaa.done():  # A broke or we were cancelled: no orphan, as a TaskGroup
                aaaa.cancel()
                await asyncio.wait([aaaa])
            first.close()

    async def lookup(self, name: str, qtype: str, first: SharedUdp | None = None) -> _Lookup:
        """Ask the nameservers in order, `attempts` rounds, until an answer settles it; the
        first try over `first` when given."""
        failures: list[Reason] = []
        for _ in range(self.resolv.attempts):
            for server in self.resolv.nameservers:
                if self.remaining() <= 0:
                    return _Lookup(None, None, (*failures, Reason.DNS_TIMEOUT))
                outcome = await self.ask(name, qtype, server, first)
                first = None
                if isinstance(outcome, Answer):
                    return _Lookup(outcome, server, tuple(failures))
                failures.append(outcome)
        return _Lookup(None, None, tuple(failures))

    async def ask(
        self, name: str, qtype: str, server: Nameserver, shared: SharedUdp | None = None
    ) -> Answer | Reason:
        """One question to one server: UDP (over `shared` when given), then TCP when
        truncated. Settled answer or why not."""
        query = make_query(name, qtype)
        outcome = await self.send(query, name, qtype, server, "udp", shared)
        if isinstance(outcome, Answer) and outcome.truncated:
            if self.remaining() <= 0:
                return Reason.DNS_TIMEOUT
            outcome = await self.send(query, name, qtype, server, "tcp")
        if not isinstance(outcome, Answer) or outcome.rcode in ("NOERROR", "NXDOMAIN"):
            return outcome
        return _RCODE_REASONS.get(outcome.rcode, Reason.DNS_ERROR)

    async def send(
        self,
        query: Query,
        name: str,
        qtype: str,
        server: Nameserver,
        proto: str,
        shared: SharedUdp | None = None,
    ) -> Answer | Reason:
        """Send once and record the try; socket trouble becomes a reason, never an exception."""
        record = _Try(name, qtype, server, proto)
        self.tries.append(record)  # before any await, so the list is in the order sent
        timeout = min(self.resolv.timeout_s, self.remaining())
        started = time.monotonic()
        try:
            if shared is not None:
                answer = await shared.ask(query, timeout)
            else:
                ask = ask_tcp if proto == "tcp" else ask_udp
                answer = await ask(query, server, timeout)
        except MalformedReply as exc:
            record.rcode, record.error = "MALFORMED", base.describe(exc)
            return Reason.DNS_ERROR
        except (TimeoutError, OSError) as exc:
            reason = base.reason_for_exception(exc, timeout=Reason.DNS_TIMEOUT)
            if reason is Reason.DNS_TIMEOUT:
                return reason  # record.rcode stays TIMEOUT
            record.rcode, record.error = reason.value.upper(), base.describe(exc)
            # An errno we do not classify still means this server could not be asked.
            return Reason.DNS_ERROR if reason is Reason.PROBE_ERROR else reason
        finally:
            record.ms = base.ms(time.monotonic() - started)
        record.rcode, record.truncated = answer.rcode, answer.truncated
        return answer


async def _resolve(
    step: Step, candidates: list[str], resolv: ResolvConf, timeout_s: float
) -> StepResult:
    """Try the candidate names in order and report the step."""
    started = time.monotonic()
    names = [name for name in candidates if is_valid_name(name)]
    if not names:
        detail = f"not a valid DNS name: {', '.join(candidates)}"
        return StepResult(step, Status.ERROR, Reason.PROBE_ERROR, 0.0, detail)
    search = _Search(resolv, started + timeout_s)
    results: list[_NameResult] = []
    for name in names:
        result = await search.name(name)
        results.append(result)
        if result.verdict not in _NEXT_NAME:  # found, or glibc would stop here
            break
    return _report(step, search, names, results, time.monotonic() - started)


def _report(
    step: Step,
    search: _Search,
    names: list[str],
    results: list[_NameResult],
    duration_s: float,
) -> StepResult:
    resolver = str(search.resolv.nameservers[0])
    tried = tuple(t.evidence() for t in search.tries)
    last = results[-1]
    winner = last.winner
    if winner is not None and winner.answer is not None:
        addresses = [*_addresses(last.a), *_addresses(last.aaaa)]
        found = DnsEvidence(  # built once, not built and then replaced: every good round
            resolver=resolver,
            candidates=tuple(names),
            tried=tried,
            addresses=tuple(dict.fromkeys(addresses)),
            name=last.name,
            cname=tuple(winner.answer.cnames),
        )
        detail = _ok_detail(winner, last, duration_s)
        return base.ok(step, duration_s, detail, found)
    evidence = DnsEvidence(resolver=resolver, candidates=tuple(names), tried=tried)
    reason = _step_reason(search, results)
    detail = _fail_detail(reason, search, names, results, duration_s)
    return base.fail(step, reason, duration_s, detail, evidence)


def _addresses(lookup: _Lookup) -> tuple[str, ...]:
    return lookup.answer.addresses if lookup.answer is not None else ()


def _step_reason(search: _Search, results: list[_NameResult]) -> Reason:
    """The most telling reason over the whole search (see the module docstring)."""
    if any(t.rcode == "SERVFAIL" for t in search.tries):
        return Reason.SERVFAIL
    verdicts = [r.verdict for r in results]
    if verdicts[-1] not in _NEXT_NAME:
        return verdicts[-1] or Reason.DNS_ERROR
    if all(v is Reason.NXDOMAIN for v in verdicts):
        return Reason.NXDOMAIN
    return Reason.NO_DATA


def _ok_detail(winner: _Lookup, result: _NameResult, duration_s: float) -> str:
    server = winner.server or "?"
    chain = winner.answer.cnames if winner.answer is not None else ()
    via = f" CNAME {' -> '.join(chain)}" if chain else ""
    records = " ".join(
        f"{qtype} {', '.join(_addresses(lookup))}"
        for qtype, lookup in (("A", result.a), ("AAAA", result.aaaa))
        if _addresses(lookup)
    )
    return f"{server} answered {result.name}{via} {records} ({_ms_text(duration_s)})"


def _fail_detail(
    reason: Reason,
    search: _Search,
    names: list[str],
    results: list[_NameResult],
    duration_s: float,
) -> str:
    """E.g. `10.0.0.10: NXDOMAIN for foo.svc.cluster.local., foo. (tried 2 names, ...)`."""
    asked = list(dict.fromkeys(str(t.server) for t in search.tries))
    servers = ", ".join(asked) or str(search.resolv.nameservers[0])
    label = _LABELS.get(reason, reason.value.upper())
    tried = [r.name for r in results]
    count = f"{len(tried)} of {len(names)}" if len(tried) < len(names) else f"{len(tried)}"
    plural = "name" if len(names) == 1 else "names"
    return (
        f"{servers}: {label} for {', '.join(_names_showing(reason, search, results))} "
        f"(tried {count} {plural}, {len(search.tries)} queries, {_ms_text(duration_s)})"
    )


def _names_showing(reason: Reason, search: _Search, results: list[_NameResult]) -> list[str]:
    """The names the reason is about: the servfailing ones, or those with that verdict."""
    if reason is Reason.SERVFAIL:
        shown = [
            r.name
            for r in results
            if any(t.name == r.name and t.rcode == "SERVFAIL" for t in search.tries)
        ]
    else:
        shown = [r.name for r in results if r.verdict is reason]
    return shown or [r.name for r in results]


def _ms_text(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"
