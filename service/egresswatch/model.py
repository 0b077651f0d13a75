"""Frozen value types and the closed vocabularies of DESIGN.md §1-2.

Nothing here does I/O. Every other module speaks in these words and no synonyms.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

from egresswatch.evidence import NOT_RUN, Evidence


class Step(StrEnum):
    """The checklist, in table order (probe steps first, then derived ones)."""

    DNS_CLUSTER = "dns_cluster"
    DNS_UPSTREAM = "dns_upstream"
    TCP_CONNECT = "tcp_connect"
    TLS_HANDSHAKE = "tls_handshake"
    HTTP_RESPONSE = "http_response"
    PATH_TRACE = "path_trace"
    SOURCE_COMPARE = "source_compare"
    CONTROL_EXTERNAL = "control_external"
    NETWORK_POLICY = "network_policy"
    EGRESS_DEVICE = "egress_device"


_STEP_ORDER = {step: position for position, step in enumerate(Step)}  # table order


PROBE_STEPS: tuple[Step, ...] = (
    Step.DNS_CLUSTER,
    Step.DNS_UPSTREAM,
    Step.TCP_CONNECT,
    Step.TLS_HANDSHAKE,
    Step.HTTP_RESPONSE,
    Step.PATH_TRACE,
)


class Status(StrEnum):
    OK = "ok"
    FAIL = "fail"
    SKIPPED = "skipped"
    ERROR = "error"  # the probe itself broke, not the target


class Reason(StrEnum):
    """Why a step did not succeed. Closed: metrics labels come from here, never from exceptions."""

    # DNS
    NXDOMAIN = "nxdomain"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    NO_DATA = "no_data"  # NOERROR without an address record
    DNS_TIMEOUT = "dns_timeout"
    DNS_ERROR = "dns_error"  # another rcode or a malformed answer
    # TCP and path
    CONN_REFUSED = "conn_refused"
    CONN_RESET = "conn_reset"
    CONN_TIMEOUT = "conn_timeout"
    NET_UNREACHABLE = "net_unreachable"
    HOST_UNREACHABLE = "host_unreachable"
    # TLS
    TLS_UNTRUSTED = "tls_untrusted"
    TLS_EXPIRED = "tls_expired"
    TLS_NAME_MISMATCH = "tls_name_mismatch"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    # HTTP, proxies and firewalls
    HTTP_STATUS = "http_status"
    HTTP_PROTOCOL = "http_protocol"  # not an HTTP answer, or the peer closed mid-answer
    PROXY_AUTH_REQUIRED = "proxy_auth_required"
    PROXY_DENIED = "proxy_denied"
    PROXY_ERROR = "proxy_error"  # the proxy's own failure: it answered 5xx of its own
    # The proxy works and reports that it could not reach the destination (refused, reset,
    # timed out, bad gateway): the fault lies past the proxy, at the endpoint or beyond.
    DESTINATION_UNREACHABLE = "destination_unreachable"
    FIREWALL_DENIED = "firewall_denied"
    TIMEOUT = "timeout"
    # Why a step was skipped
    NOT_CONFIGURED = "not_configured"  # e.g. no upstream resolver given: never guess one
    NOT_APPLICABLE = "not_applicable"  # e.g. TLS for a plain TCP target, DNS for an IP literal
    NO_ADDRESS = "no_address"  # nothing resolved, no last good IP, none pinned
    DEPENDENCY_FAILED = "dependency_failed"  # an earlier step failed, so this one cannot run
    NOT_DUE = "not_due"  # path_trace runs on its own period, or when a step failed
    # The probe itself
    PROBE_ERROR = "probe_error"
    # Our own lateness: the step timed out while the prober's event loop was stalled for
    # much of its budget (status `error`, probes/overload.py), so the target is not judged.
    PROBER_OVERLOADED = "prober_overloaded"


class Suspect(StrEnum):
    CLUSTER_DNS = "cluster_dns"
    UPSTREAM_DNS = "upstream_dns"
    NAME_NOT_FOUND = "name_not_found"
    NETWORK_POLICY = "network_policy"
    NSG_OR_ROUTE = "nsg_or_route"
    FIREWALL = "firewall"
    PROXY = "proxy"
    TLS_INTERCEPTION = "tls_interception"
    ENDPOINT_DOWN = "endpoint_down"
    ENDPOINT_ERROR = "endpoint_error"
    EGRESS_PATH = "egress_path"
    SOURCE_LOCAL = "source_local"
    UNKNOWN = "unknown"


class Role(StrEnum):
    ENDPOINT = "endpoint"
    CONTROL = "control"


class SourceKind(StrEnum):
    POD = "pod"
    NODE = "node"


def pod_source_name(namespace: str, workload: str, node: str) -> str:
    """A designated pod source's name: `NAMESPACE/WORKLOAD@NODE`.

    Its identity is the workload (Deployment, DaemonSet or StatefulSet) and the node it runs
    on, not the pod: a pod replaced on the same node continues the same history, and replicas
    on different nodes (different paths out) stay different sources. The agent names itself
    so (agent/identity.py) and the controller expects it so (kube/sources.py).
    """
    return f"{namespace}/{workload}@{node}"


class Scheme(StrEnum):
    HTTPS = "https"
    HTTP = "http"
    TCP = "tcp"


DEFAULT_PORTS: Mapping[Scheme, int] = {Scheme.HTTPS: 443, Scheme.HTTP: 80}


@functools.lru_cache(maxsize=4096)  # rounds ask about the same few hosts, several times each
def is_ip_address(host: str) -> bool:
    """True when `host` is an IPv4 or IPv6 address as text (not a name). Memoized: for a name
    `ipaddress` raises three exceptions, ~5 µs, and a by-name round asked five times."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Endpoint:
    """Where a target lives: scheme, host, port and (for HTTP) the path to request."""

    scheme: Scheme
    host: str
    port: int
    path: str = "/"

    @property
    def is_ip_literal(self) -> bool:
        return is_ip_address(self.host)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.scheme is Scheme.TCP:
            return f"{host}:{self.port}"
        default = DEFAULT_PORTS[self.scheme]
        netloc = host if self.port == default else f"{host}:{self.port}"
        return f"{self.scheme.value}://{netloc}{self.path}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse `https://host[:port]/path`, `http://...` or `host:port`; ValueError says why."""
        text = text.strip()
        if "://" in text:
            parts = urlsplit(text)
            try:
                scheme = Scheme(parts.scheme.lower())
            except ValueError:
                raise ValueError(
                    f"unsupported scheme {parts.scheme!r}: use https://, http:// or host:port"
                ) from None
            if scheme is Scheme.TCP:
                raise ValueError("write a plain TCP target as host:port, without tcp://")
            host = parts.hostname
            if not host:
                raise ValueError(f"no host in {text!r}")
            try:
                port = parts.port or DEFAULT_PORTS[scheme]
            except ValueError:
                raise ValueError(f"bad port in {text!r}") from None
            path = parts.path or "/"
            if parts.query:
                path = f"{path}?{parts.query}"
            return cls(scheme, _check_host(host), port, path)
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is neither a URL (https://host/...) nor host:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"write an IPv6 address as [addr]:port, not {text!r}")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text!r} in {text!r}: must be 1-65535")
        return cls(Scheme.TCP, _check_host(host), int(port_text))


def _check_host(host: str) -> str:
    host = host.rstrip(".") if host.endswith(".") and len(host) > 1 else host
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or not all(
        0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)
        for label in host.split(".")
    ):
        raise ValueError(f"bad host name {host!r}")
    return host.lower()


# Slotted: detection keeps the latest round of every (source, target) with its steps, and a
# __dict__ each was a quarter of a round's memory (docs/performance.md, issue 14).
@dataclass(frozen=True, slots=True)
class StepResult:
    """One step of one round: what happened, why, how long it took, and the evidence.

    `detail` is the one-line evidence a person reads; `evidence` is the same as a frozen type,
    the step's own (steps.py says which) or `NotRun` when the step did not judge the target.
    """

    step: Step
    status: Status
    reason: Reason | None = None
    duration_s: float = 0.0
    detail: str = ""
    evidence: Evidence = NOT_RUN

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL


E = TypeVar("E", bound=Evidence)


def evidence_of(result: StepResult | None, kind: type[E]) -> E | None:
    """`result`'s evidence when it is a `kind`, else None (no result, or the step did not run)."""
    if result is None or not isinstance(result.evidence, kind):
        return None
    return result.evidence


@dataclass(frozen=True, slots=True)
class RoundResult:
    """One run of the checklist for one (source, target)."""

    target: str
    source: str
    started_at: datetime
    steps: tuple[StepResult, ...]

    @property
    def first_failing_step(self) -> Step | None:
        return first_failing_step(self.steps)

    def step(self, step: Step) -> StepResult | None:
        for result in self.steps:
            if result.step is step:
                return result
        return None


def first_failing_step(steps: tuple[StepResult, ...] | list[StepResult]) -> Step | None:
    """The first step in table order whose status is `fail` (DESIGN.md §1)."""
    # Asked several times a round (metrics, detection, storage): no set and no walk over the
    # Step enum (5 µs a call) when, as usually, no step or one step failed.
    failing = [r.step for r in steps if r.status is Status.FAIL]
    if len(failing) < 2:
        return failing[0] if failing else None
    return min(failing, key=_STEP_ORDER.__getitem__)


@dataclass(frozen=True)
class StatusRanges:
    """The HTTP status codes a target is expected to answer with, as inclusive ranges."""

    ranges: tuple[tuple[int, int], ...] = ((200, 399),)

    def __contains__(self, code: object) -> bool:
        return isinstance(code, int) and any(lo <= code <= hi for lo, hi in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)

    @classmethod
    def parse(cls, text: str) -> StatusRanges:
        """Parse `200-399`, `200,204` or `200-299,301`; ValueError says what is wrong."""
        ranges: list[tuple[int, int]] = []
        for part in str(text).split(","):
            lo_text, _, hi_text = part.strip().partition("-")
            hi_text = hi_text or lo_text
            if not (lo_text.isdigit() and hi_text.isdigit()):
                raise ValueError(f"bad status range {part.strip()!r}: use 200, 200-399 or 200,204")
            lo, hi = int(lo_text), int(hi_text)
            if not 100 <= lo <= hi <= 599:
                raise ValueError(f"bad status range {part.strip()!r}: codes are 100-599, low first")
            ranges.append((lo, hi))
        return cls(tuple(ranges))

    @classmethod
    def from_wire(cls, value: object) -> StatusRanges:
        """What a config or a plan may give: `"200-399"`, `200`, `[200, 204]` or the value
        itself; ValueError says what is wrong (wire.py's readers call this by name)."""
        if isinstance(value, StatusRanges):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if not isinstance(value, str):
            raise ValueError("expect_status is a string like '200-399' or '200,204'")
        return cls.parse(value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: object, handler: object) -> Any:
        """pydantic's schema (the config and the controller's plan): read by `from_wire`,
        written as its text. Imported here: an agent, which uses no pydantic, never calls it."""
        from pydantic_core import core_schema

        given = core_schema.union_schema(
            [
                core_schema.str_schema(),
                core_schema.int_schema(),
                core_schema.list_schema(core_schema.int_schema()),
            ]
        )
        return core_schema.no_info_plain_validator_function(
            cls.from_wire,
            json_schema_input_schema=given,
            serialization=core_schema.plain_serializer_function_ser_schema(
                str, return_schema=core_schema.str_schema()
            ),
        )


class StepState(StrEnum):
    """A step's state for one (source, target) after hysteresis: what changes flip between."""

    OK = "ok"
    FAILING = "failing"
    DEGRADED = "degraded"  # ok, but its latency shifted up and stayed there
    UNKNOWN = "unknown"  # the source stopped reporting: not failing, just not known


@dataclass(frozen=True)
class Change:
    """A step's state flipping for a (source, target), after hysteresis.

    `started_at` is the first round of the run that caused the flip (when it really began);
    `detected_at` is when the hysteresis was satisfied. `step` is None for a change of the
    whole source (it went silent, or came back).
    """

    source: str
    target: str
    step: Step | None
    previous: StepState
    current: StepState
    started_at: datetime
    detected_at: datetime
    reason: Reason | None = None
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    """The controller's diagnosis: the likely cause, the evidence, and the next manual command."""

    suspect: Suspect
    first_failing_step: Step | None
    evidence: tuple[str, ...] = ()
    next_command: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)  # structured evidence for the API
