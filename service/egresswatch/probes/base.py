"""What every probe shares: building results, timing, and translating exceptions.

Probes report, they do not raise. Library and OS exceptions become a `Reason` here, in one
place, so the closed vocabulary cannot leak exception text into metrics labels.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from egresswatch.evidence import NOT_RUN, Evidence, NotRun
from egresswatch.model import Reason, Status, Step, StepResult

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# errno -> reason for connect(), read() and the socket error queue.
_ERRNO_REASONS: dict[int, Reason] = {
    errno.ECONNREFUSED: Reason.CONN_REFUSED,
    errno.ECONNRESET: Reason.CONN_RESET,
    errno.ECONNABORTED: Reason.CONN_RESET,
    errno.EPIPE: Reason.CONN_RESET,
    errno.ETIMEDOUT: Reason.CONN_TIMEOUT,
    errno.ENETUNREACH: Reason.NET_UNREACHABLE,
    errno.ENETDOWN: Reason.NET_UNREACHABLE,
    # This source's own stack cannot use the address: no address of that family to send from
    # ("Cannot assign requested address"), or the family is off. The name resolves to
    # addresses this source has no path to: a failure of its path, never our probe's fault.
    errno.EADDRNOTAVAIL: Reason.NET_UNREACHABLE,
    errno.EAFNOSUPPORT: Reason.NET_UNREACHABLE,
    errno.EHOSTUNREACH: Reason.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Reason.HOST_UNREACHABLE,
    errno.EACCES: Reason.FIREWALL_DENIED,  # a local REJECT with icmp admin-prohibited
    errno.EPERM: Reason.FIREWALL_DENIED,  # a local output filter
}


def reason_for_errno(code: int | None) -> Reason | None:
    """The reason for an errno, or None when it is not a network outcome we know."""
    if code is None:
        return None
    return _ERRNO_REASONS.get(code)


def reason_for_exception(exc: BaseException, *, timeout: Reason = Reason.TIMEOUT) -> Reason:
    """Translate an exception raised while talking to a peer into a reason.

    `timeout` is the reason a timeout means at this point (e.g. `conn_timeout` while
    connecting, `dns_timeout` while resolving).
    """
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return timeout
    if isinstance(exc, ssl.SSLCertVerificationError):
        return tls_verify_reason(exc.verify_code)
    if isinstance(exc, ssl.SSLError):
        return Reason.TLS_HANDSHAKE_FAILED
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Reason.CONN_RESET
    if isinstance(exc, ConnectionRefusedError):
        return Reason.CONN_REFUSED
    if isinstance(exc, OSError):
        found = reason_for_errno(exc.errno)
        if found is not None:
            return found
    return Reason.PROBE_ERROR


# OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h).
_X509_EXPIRED = {10}  # CERT_HAS_EXPIRED
_X509_NAME = {62, 63, 64}  # HOSTNAME_MISMATCH, EMAIL_MISMATCH, IP_ADDRESS_MISMATCH
_X509_UNTRUSTED = {2, 18, 19, 20, 21, 27, 28}  # unknown issuer, self-signed, not trusted


def tls_verify_reason(verify_code: int) -> Reason:
    if verify_code in _X509_EXPIRED:
        return Reason.TLS_EXPIRED
    if verify_code in _X509_NAME:
        return Reason.TLS_NAME_MISMATCH
    if verify_code in _X509_UNTRUSTED:
        return Reason.TLS_UNTRUSTED
    return Reason.TLS_HANDSHAKE_FAILED


def describe(exc: BaseException) -> str:
    """A short human text for the `detail` line (never used as a label)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def ms(seconds: float) -> float:
    """Seconds to milliseconds, rounded for evidence."""
    return round(seconds * 1000.0, 3)


def ok(step: Step, duration_s: float, detail: str, evidence: Evidence) -> StepResult:
    return StepResult(step, Status.OK, None, duration_s, detail, evidence)


def fail(
    step: Step, reason: Reason, duration_s: float, detail: str, evidence: Evidence
) -> StepResult:
    return StepResult(step, Status.FAIL, reason, duration_s, detail, evidence)


def skipped(
    step: Step, reason: Reason, detail: str, evidence: Evidence | None = None
) -> StepResult:
    """A step that did not run; `evidence` defaults to `NOT_RUN` (nothing to say). Without
    evidence, the same (step, reason, detail) gives the same frozen result object."""
    if evidence is None:
        return _skipped_alike(step, reason, detail)
    return StepResult(step, Status.SKIPPED, reason, 0.0, detail, evidence)


# Most rounds skip the same steps the same way (an IP target's DNS steps, a TCP target's TLS and
# HTTP, the trace when not due): one shared result each, not a new object a round (a frozen
# dataclass's __init__ is about 2 µs, and detection keeps every pair's latest round). The
# details are fixed texts or a target's own, so the cache stays small; it is bounded anyway.
@functools.lru_cache(maxsize=1024)
def _skipped_alike(step: Step, reason: Reason, detail: str) -> StepResult:
    return StepResult(step, Status.SKIPPED, reason, 0.0, detail, NOT_RUN)


def blocked_by(step: Step, earlier: StepResult) -> StepResult:
    """`step` skipped because `earlier` did not succeed (`dependency_failed`)."""
    why = earlier.reason.value if earlier.reason else earlier.status.value
    return skipped(
        step,
        Reason.DEPENDENCY_FAILED,
        f"{earlier.step.value} did not succeed ({why})",
        NotRun(blocked_by=earlier.step.value),
    )


async def guarded(
    step: Step, probe: Awaitable[StepResult], clock: Clock = time.perf_counter
) -> StepResult:
    """Await a probe; if it breaks anyway, report `error` instead of raising.

    A bug in a probe must cost one step of one round, never the round or the scheduler.
    """
    started = clock()
    try:
        return await probe
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the one place a probe's own bug is caught
        log.exception("probe %s broke", step.value)
        return StepResult(
            step,
            Status.ERROR,
            Reason.PROBE_ERROR,
            clock() - started,
            f"probe error: {type(exc).__name__}: {describe(exc)}",
            NotRun(exception=type(exc).__name__),
        )
