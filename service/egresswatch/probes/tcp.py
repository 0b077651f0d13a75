"""Step 3, `tcp_connect`: `nc -z -v host 443` against the addresses the round found.

Also the one TCP connect primitive both TCP steps use (`connect_once`): a non-blocking
connect with IP_RECVERR on, so when a router answers with ICMP the kernel hands us the
ICMP type, code and sender through the socket's error queue, not just an errno. That is what
tells a firewall's REJECT (ICMP admin-prohibited or port-unreachable) from a dead host
(host-unreachable) and from the endpoint itself refusing (a TCP RST). `path_trace` is the
same connect with a small TTL.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from egresswatch.evidence import TcpAttempt, TcpEvidence
from egresswatch.model import Reason, Status, Step, StepResult, is_ip_address
from egresswatch.probes.base import ms, ok, reason_for_exception, skipped
from egresswatch.probes.handover import Handover
from egresswatch.probes.icmp import (
    IP_RECVERR,
    IPV6_RECVERR,
    IcmpError,
    read_icmp_error,
)

MAX_ADDRESSES = 4  # like a client library: a few addresses of a name, never all of them
MIN_ATTEMPT_S = 1.0  # one initial SYN RTO: less, and a single lost SYN reads as a silent drop
RESET_GRACE_S = 0.15  # a peer that accepts and resets at once does it well within this


@dataclass
class Outcome:
    """One connect: connected (`sock` open, `reason` None) or why not, and how long it took.

    `address` is the address connected to; `icmp` is what a router said, when it said
    something. The caller owns `sock` and must close it.
    """

    address: str
    elapsed_s: float
    reason: Reason | None = None
    icmp: IcmpError | None = None
    error: str = ""  # a short text for the detail line when the reason alone is too terse
    sock: socket.socket | None = None

    @property
    def connected(self) -> bool:
        return self.sock is not None

    @property
    def refused_by_peer(self) -> bool:
        """A RST answered the SYN (not an ICMP): the destination host itself answered."""
        return self.reason is Reason.CONN_REFUSED and self.icmp is None


async def connect_once(
    address: str, port: int, timeout_s: float, *, ttl: int | None = None
) -> Outcome:
    """Connect to an IP literal within `timeout_s`; never raises (but for cancellation).

    With `ttl`, the SYN is sent with that TTL (hop limit), for path_trace.
    """
    started = time.perf_counter()
    if not is_ip_address(address):  # memoized: parsing the address was a part of every round
        return Outcome(address, 0.0, Reason.PROBE_ERROR, error="not an IP address")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET  # only IPv6 has colons
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:  # e.g. IPv6 disabled on this source
        return Outcome(address, 0.0, reason_for_exception(exc), error=_errtext(exc))
    try:
        sock.setblocking(False)
        _set_options(sock, family, ttl)
    except OSError as exc:  # not a network outcome: this source cannot set the option
        sock.close()
        return Outcome(address, 0.0, Reason.PROBE_ERROR, error=f"socket option: {_errtext(exc)}")
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.get_running_loop().sock_connect(sock, (address, port))
    except TimeoutError:
        sock.close()
        return Outcome(address, time.perf_counter() - started, Reason.CONN_TIMEOUT)
    except OSError as exc:
        elapsed = time.perf_counter() - started
        icmp = read_icmp_error(sock)
        sock.close()
        return Outcome(address, elapsed, _reason(exc, icmp), icmp, _errtext(exc))
    except (ValueError, OverflowError):  # a port outside 0-65535: the caller's mistake
        sock.close()
        return Outcome(address, 0.0, Reason.PROBE_ERROR, error=f"bad port {port!r}")
    except BaseException:  # cancelled: never leak the socket
        sock.close()
        raise
    return Outcome(address, time.perf_counter() - started, sock=sock)


def _set_options(sock: socket.socket, family: int, ttl: int | None) -> None:
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        if ttl is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        if ttl is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)


def _errtext(exc: OSError) -> str:
    """The OS's words for an errno (asyncio's own message repeats the address)."""
    return os.strerror(exc.errno) if exc.errno else type(exc).__name__


def _reason(exc: OSError, icmp: IcmpError | None) -> Reason:
    if icmp is not None:
        return icmp.reason
    if exc.errno == errno.EINVAL:
        # connect() of a checked IP literal fails EINVAL only on a blackhole route here.
        return Reason.NET_UNREACHABLE
    return reason_for_exception(exc, timeout=Reason.CONN_TIMEOUT)


async def tcp_connect(
    addresses: Sequence[str],
    port: int,
    *,
    timeout_s: float,
    ip_source: str,
    reset_grace_s: float = RESET_GRACE_S,
    handover: Handover | None = None,
) -> StepResult:
    """Step `tcp_connect`: connect to the first of `addresses` (at most 4) that accepts.

    Each address gets the budget left divided by the addresses left (at least
    MIN_ATTEMPT_S, never more than what is left), so one silent IP cannot eat it all.
    After connecting, a read of `reset_grace_s` catches a peer that accepts and resets at
    once (a firewall that lets the handshake through): `conn_reset`; data, EOF or nothing
    within the grace is a success. `ip_source` says where the addresses came from
    (dns_cluster, dns_upstream, last_good, pinned) and is echoed in the evidence.

    With `handover` (a round that continues to TLS or HTTP on this connection), the connection
    is left open there instead, without the grace read: a reset right after the accept then
    shows in the next step, with that phase's reason (`tls_handshake` firewall_denied, the
    shape of a firewall refusing TLS; `http_response` conn_reset). A TCP-only target keeps
    the grace read, since nothing follows that could see the reset.

    Evidence: TcpEvidence (`address` the one connected, `attempts` each connect).
    fail: the first attempt's reason: conn_refused (RST), conn_reset, conn_timeout (silence),
    net_unreachable (ICMP, no route, a blackhole route), host_unreachable, firewall_denied
    (ICMP admin-prohibited or port-unreachable, or a prohibit route on this source);
    error/probe_error for an address that is not an IP. duration: the successful connect's time
    (without the grace read), else the time spent. Never raises.
    """
    chosen = list(addresses)[:MAX_ADDRESSES]
    untried = list(addresses)[MAX_ADDRESSES:]
    if not chosen:
        return skipped(
            Step.TCP_CONNECT,
            Reason.NO_ADDRESS,
            "no address to connect to",
            TcpEvidence(port=port, ip_source=ip_source),
        )
    started = time.perf_counter()
    deadline = started + timeout_s
    attempts: list[TcpAttempt] = []
    failures: list[Outcome] = []
    for index, address in enumerate(chosen):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            untried = chosen[index:] + untried
            break
        share = min(remaining, max(remaining / (len(chosen) - index), MIN_ATTEMPT_S))
        outcome = await connect_once(address, port, share)
        if outcome.sock is not None and handover is not None:
            handover.keep_socket(outcome.sock, outcome.elapsed_s)
            outcome.sock = None
        elif outcome.sock is not None:
            outcome = await _reset_within(outcome, reset_grace_s)
        attempts.append(_attempt_evidence(outcome))
        if outcome.reason is None:
            detail = f"connected to {_hostport(address, port)} in {_human(outcome.elapsed_s)}"
            detail += f" (from {ip_source})" + _after(failures, port)
            evidence = TcpEvidence(address, port, ip_source, tuple(attempts), tuple(untried))
            return ok(Step.TCP_CONNECT, outcome.elapsed_s, detail, evidence)
        failures.append(outcome)

    elapsed = time.perf_counter() - started
    reason = failures[0].reason if failures else Reason.CONN_TIMEOUT
    assert reason is not None  # failures hold only outcomes with a reason
    detail = "; ".join(_failure_text(f, port) for f in failures) or "no time left to connect"
    detail += f" (from {ip_source})"
    if untried:
        detail += f"; {len(untried)} more not tried"
    return StepResult(
        Step.TCP_CONNECT,
        Status.ERROR if reason is Reason.PROBE_ERROR else Status.FAIL,
        reason,
        elapsed,
        detail,
        TcpEvidence(None, port, ip_source, tuple(attempts), tuple(untried)),
    )


async def try_address(address: str, port: int, timeout_s: float) -> TcpAttempt:
    """One connect, closed at once: the evidence of whether `address` is reachable."""
    outcome = await connect_once(address, port, timeout_s)
    if outcome.sock is not None:
        outcome.sock.close()
    return _attempt_evidence(outcome)


async def idle_check(address: str, port: int, *, timeout_s: float, grace_s: float) -> TcpAttempt:
    """One more connection to `address:port` that sends nothing and reads for `grace_s`, then
    is closed: what the endpoint does to a connection unprompted. `outcome` is conn_reset
    (reset), closed (a FIN), ok (it stayed up, or sent a banner), or the connect's reason;
    `ms` the time until that was known. Never raises (but for cancellation)."""
    outcome = await connect_once(address, port, timeout_s)
    sock = outcome.sock
    if sock is None:
        return _attempt_evidence(outcome)
    started = time.perf_counter()
    try:
        got = await _grace_read(sock, grace_s)
    finally:
        sock.close()
    waited = ms(outcome.elapsed_s + time.perf_counter() - started)
    if isinstance(got, OSError):
        return TcpAttempt(address, reason_for_exception(got).value, waited)
    return TcpAttempt(address, got or "ok", waited)


async def _grace_read(sock: socket.socket, grace_s: float) -> OSError | str | None:
    """Read a fresh connection for `grace_s`: None when it stayed up (quiet, or data), "closed"
    on a FIN, the error that ended it (a reset) otherwise."""
    try:
        async with asyncio.timeout(grace_s):
            data = await asyncio.get_running_loop().sock_recv(sock, 1)
    except TimeoutError:
        return None  # it stayed up and quiet, as most servers do before the client speaks
    except OSError as exc:
        return exc
    return None if data else "closed"


async def _reset_within(outcome: Outcome, grace_s: float) -> Outcome:
    """Read for `grace_s` on a fresh connection; close it. A reset turns it into a failure;
    data, EOF or silence leave it a success (a TCP-only target's listener may close at once)."""
    sock = outcome.sock
    assert sock is not None
    started = time.perf_counter()
    try:
        got = await _grace_read(sock, grace_s)
    finally:
        sock.close()
    outcome.sock = None
    if isinstance(got, OSError):
        waited = outcome.elapsed_s + time.perf_counter() - started
        return Outcome(outcome.address, waited, reason_for_exception(got), error=_errtext(got))
    return outcome


def _attempt_evidence(outcome: Outcome) -> TcpAttempt:
    return TcpAttempt(
        address=outcome.address,
        outcome=outcome.reason.value if outcome.reason else "ok",
        ms=ms(outcome.elapsed_s),
        icmp_from=outcome.icmp.offender if outcome.icmp else None,
    )


def _failure_text(outcome: Outcome, port: int) -> str:
    """E.g. `203.0.113.10:443 host_unreachable after 0.3 ms: ICMP host-unreachable from ...`."""
    assert outcome.reason is not None
    text = f"{_hostport(outcome.address, port)} {outcome.reason.value}"
    text += f" after {_human(outcome.elapsed_s)}"
    if outcome.icmp is not None:
        text += f": {outcome.icmp.describe()}"
    elif outcome.error and outcome.reason not in (Reason.CONN_REFUSED, Reason.CONN_RESET):
        text += f": {outcome.error}"
    return text


def _after(failures: list[Outcome], port: int) -> str:
    if not failures:
        return ""
    return ", after " + "; ".join(_failure_text(f, port) for f in failures)


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _human(seconds: float) -> str:
    """`0.4 ms`, `250 ms`, `3.0 s`: the precision a person reads."""
    if seconds >= 1.0:
        return f"{seconds:.1f} s"
    if seconds >= 0.01:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds * 1000:.1f} ms"
