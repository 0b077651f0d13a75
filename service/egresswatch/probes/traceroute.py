"""Step 6, `path_trace`: `traceroute -T -p 443 host`, without raw sockets.

Each probe is an ordinary non-blocking TCP connect whose SYN carries a small TTL (hop
limit). A router where the TTL runs out answers ICMP time-exceeded; with IP_RECVERR on, the
kernel aborts the connect and queues that ICMP, sender included, on the socket's error queue
(see tcp.connect_once). The destination answers the SYN itself (SYN-ACK, or RST for a closed
port): reached. So any process can trace, with no capability at all.

Routers rate-limit ICMP per destination (Linux: net.ipv4.icmp_ratelimit, 1 s after a burst of
6), so a trace sends one probe per TTL and never retries a hop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass

from egresswatch.evidence import TraceEvidence, TraceHop
from egresswatch.model import Reason, Status, Step, StepResult
from egresswatch.probes.base import ms
from egresswatch.probes.tcp import Outcome, connect_once

PARALLEL = 3  # TTLs in flight at once: silent tails cost one hop timeout, not three
MAX_TTL = 255  # the IP header's field


@dataclass(frozen=True)
class Hop:
    """One TTL of the trace: who answered (None: nobody within the hop timeout), and how."""

    ttl: int
    address: str | None = None
    rtt_s: float | None = None
    icmp: str | None = None  # "time_exceeded", "unreachable", or None
    reached: bool = False

    def evidence(self) -> TraceHop:
        rtt_ms = None if self.rtt_s is None else ms(self.rtt_s)
        return TraceHop(self.ttl, self.address, rtt_ms, self.icmp, self.reached)


@dataclass
class Trace:
    """The hops so far and, once it stops, why: `reason` None means reached."""

    destination: str
    port: int
    hops: list[Hop]
    silent_run: int = 0
    stopped: str = ""  # reached, unreachable, silent, max_hops, budget, local_error
    reason: Reason | None = None
    why: str = ""  # the detail line's words for a stop without a hop to show

    @property
    def last_hop(self) -> Hop | None:
        answered = [hop for hop in self.hops if hop.address is not None]
        return answered[-1] if answered else None

    def add(self, outcome: Outcome, ttl: int, max_silent: int) -> None:
        """Record the probe of `ttl`; set `stopped` when the trace should not go on."""
        icmp = outcome.icmp
        if outcome.connected or outcome.refused_by_peer:
            # a SYN-ACK or a RST: the destination host itself answered
            self.hops.append(Hop(ttl, self.destination, outcome.elapsed_s, None, True))
            self.stopped, self.reason = "reached", None
        elif icmp is not None and icmp.time_exceeded:
            self.hops.append(Hop(ttl, icmp.offender, outcome.elapsed_s, "time_exceeded"))
            self.silent_run = 0
        elif icmp is not None:
            # unreachable (or another ICMP error): whoever sent it ends the path for us
            self.hops.append(Hop(ttl, icmp.offender, outcome.elapsed_s, "unreachable"))
            self.stopped, self.reason = "unreachable", outcome.reason
            self.why = icmp.describe()
        elif outcome.reason is Reason.CONN_TIMEOUT:
            self.hops.append(Hop(ttl))
            self.silent_run += 1
            if self.silent_run >= max_silent:
                self.stopped, self.reason = "silent", Reason.CONN_TIMEOUT
        else:
            # connect() failed here before any packet left (no route, prohibit route ...):
            # every TTL would fail the same way, and no hop answered
            self.stopped, self.reason = "local_error", outcome.reason or Reason.PROBE_ERROR
            where = f"[{self.destination}]" if ":" in self.destination else self.destination
            self.why = f"connect to {where}:{self.port} failed on this source: {outcome.error}"

    def detail(self, max_hops: int, budget_s: float) -> str:
        last = self.last_hop
        last_text = f"hop {last.ttl} ({last.address})" if last else ""
        if self.stopped == "reached" and last is not None:
            hops = "1 hop" if last.ttl == 1 else f"{last.ttl} hops"
            return f"reached {self.destination} in {hops} ({ms(last.rtt_s or 0.0)} ms)"
        if self.stopped == "unreachable":
            return f"{self.why} at hop {last.ttl if last else '?'}"
        if self.stopped == "local_error":
            return self.why
        text = f"no answer past {last_text}" if last else "no hop answered"
        if self.stopped == "silent":
            return f"{text}; {self.silent_run} silent hops"
        if self.stopped == "budget":
            return f"{text}; step budget of {budget_s:g} s spent after {len(self.hops)} hops"
        answered = f"last answer from {last_text}" if last else "no hop answered"
        return f"not reached within {max_hops} hops; {answered}"


async def path_trace(
    address: str,
    port: int,
    *,
    timeout_s: float,
    max_hops: int = 30,
    hop_timeout_s: float = 1.0,
    max_silent: int = 3,
    parallel: int = PARALLEL,
) -> StepResult:
    """Step `path_trace`: TCP traceroute to `address:port`; the last hop that answered.

    TTLs 1..`max_hops` are probed in order, `parallel` at a time, each given `hop_timeout_s`
    (no answer: a silent hop, `address` null). The trace stops when the destination
    answers (SYN-ACK or RST), an ICMP unreachable comes back, `max_silent` hops in a row
    stay silent, `max_hops` is passed, or the step budget `timeout_s` is spent.

    ok when reached. fail: conn_timeout (went silent, or the budget ran out), the unreachable's
    reason (net_unreachable, host_unreachable, firewall_denied for admin-prohibited or a
    filter's port-unreachable), host_unreachable when `max_hops` ran out with routers still
    answering (a loop, or a longer path), or the reason of a connect that failed locally.
    Evidence: TraceEvidence; `last_hop` is the destination when reached, null if nothing
    answered. Never raises.
    """
    started = time.perf_counter()
    try:
        destination = str(ipaddress.ip_address(address))
    except ValueError:
        trace = Trace(address, port, [])
        return _result(trace, 0.0, Reason.PROBE_ERROR, f"{address!r} is not an IP address")
    trace = Trace(destination, port, [])
    max_hops = min(max_hops, MAX_TTL)
    deadline = started + timeout_s
    pending: dict[int, asyncio.Task[Outcome]] = {}
    try:
        await _run(trace, pending, deadline, max_hops, hop_timeout_s, max(1, max_silent), parallel)
    finally:
        await _discard(pending)
    if not trace.stopped:
        last = trace.hops[-1] if trace.hops else None
        trace.stopped = "max_hops"
        # still answering at the end: no silence to blame, so what the kernel would say
        silent_end = last is None or last.address is None
        trace.reason = Reason.CONN_TIMEOUT if silent_end else Reason.HOST_UNREACHABLE
    elapsed = time.perf_counter() - started
    return _result(trace, elapsed, trace.reason, trace.detail(max_hops, timeout_s))


async def _run(
    trace: Trace,
    pending: dict[int, asyncio.Task[Outcome]],
    deadline: float,
    max_hops: int,
    hop_timeout_s: float,
    max_silent: int,
    parallel: int,
) -> None:
    """Probe TTLs with a window of `parallel` in flight; read the answers in TTL order."""
    next_ttl = 1
    for ttl in range(1, max_hops + 1):
        while next_ttl <= max_hops and next_ttl < ttl + max(1, parallel):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            probe = connect_once(
                trace.destination, trace.port, min(hop_timeout_s, remaining), ttl=next_ttl
            )
            pending[next_ttl] = asyncio.create_task(probe, name=f"path_trace-ttl-{next_ttl}")
            next_ttl += 1
        task = pending.pop(ttl, None)
        if task is None:  # the budget ran out before this TTL could be sent
            trace.stopped, trace.reason = "budget", Reason.CONN_TIMEOUT
            return
        outcome = await task
        trace.add(outcome, ttl, max_silent)
        _close(outcome)
        if trace.stopped:
            return


async def _discard(pending: dict[int, asyncio.Task[Outcome]]) -> None:
    """Cancel the probes past the stop and close whatever they connected."""
    for task in pending.values():
        task.cancel()
    for done in await asyncio.gather(*pending.values(), return_exceptions=True):
        if isinstance(done, Outcome):  # finished before the cancel reached it
            _close(done)
    pending.clear()


def _close(outcome: Outcome) -> None:
    if outcome.sock is not None:
        outcome.sock.close()
        outcome.sock = None


def _result(trace: Trace, elapsed: float, reason: Reason | None, detail: str) -> StepResult:
    last = trace.last_hop
    reached = trace.stopped == "reached"
    if reason is None:
        status = Status.OK
    elif reason is Reason.PROBE_ERROR:
        status = Status.ERROR
    else:
        status = Status.FAIL
    return StepResult(
        Step.PATH_TRACE,
        status,
        reason,
        elapsed,
        detail,
        TraceEvidence(
            destination=trace.destination,
            port=trace.port,
            hops=tuple(hop.evidence() for hop in trace.hops),
            last_hop=last.address if last else None,
            reached=reached,
            stopped=trace.stopped or "error",
        ),
    )
