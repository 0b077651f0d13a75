"""Each probe step's evidence as a frozen type: what the probe wrote, read by attribute.

A probe builds one of these; the API, the database and `egresswatch check --json` carry it as
a JSON object whose keys are the field names (`to_json`), and it comes back with `from_json`:

- strict (ingest, `POST /api/v1/results`): an unknown key, a wrong type or a non-finite number
  raises `EvidenceError` naming the field by its JSON path (`attempts[0].ms`);
- lenient (rows already stored): unknown keys are ignored and a value of the wrong type takes
  the field's default, so a row written by an older or newer egresswatch still reads.

A missing key takes the field's default in both modes: only the keys that identify a nested
record (a DNS try's name, a connect attempt's address, a hop's TTL) are required.

Fields map to JSON as: str, int, float (an int is accepted), bool, `X | None` (null), tuples
(arrays) and nested records (objects). Which type belongs to which step is `steps.py`'s
business. Standard library only: the model imports this module.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar, Union, get_args, get_origin, get_type_hints

__all__ = [
    "DnsEvidence",
    "DnsTry",
    "Evidence",
    "EvidenceError",
    "HttpEvidence",
    "NotRun",
    "Record",
    "TcpAttempt",
    "TcpEvidence",
    "TlsEvidence",
    "TraceEvidence",
    "TraceHop",
    "json_schema",
]

# Field metadata: the key is left out of the JSON while the field holds its default (the
# probes wrote these keys only when they had something to say; the stored shape keeps that).
OMITTED_BY_DEFAULT = {"omit_default": True}


class EvidenceError(ValueError):
    """Evidence that does not fit its type. `field` is the JSON path inside the evidence
    (empty for the evidence object itself), `problem` what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Record:
    """A frozen value that is a JSON object: one key per field, in field order."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object (lists for tuples, objects for nested records)."""
        found: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.metadata.get("omit_default") and value == item.default:
                continue
            found[item.name] = _encode(value)
        return found

    @classmethod
    def from_json(cls, data: object, *, strict: bool = True) -> Self:
        """The record `data` holds; `EvidenceError` when it does not fit (see the module)."""
        return _record(cls, data, strict, "")


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
    literal, proxy), `untried` the addresses left over."""

    address: str | None = None
    port: int | None = None
    ip_source: str | None = None
    attempts: tuple[TcpAttempt, ...] = ()
    untried: tuple[str, ...] = ()

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
    days_left, the verification error, phase timings in ms, and the proxy's status when it
    refused the CONNECT."""

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


# --- http_response ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpEvidence(Evidence):
    """The request to `url` and its answer: `status` from whoever answered last,
    `proxy_status` the answer to CONNECT, the `server` and `location` headers, and phase
    timings in ms (null for a phase not reached)."""

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


# --- the codec -------------------------------------------------------------------------------


R = TypeVar("R", bound=Record)


_HINTS: dict[type[Record], dict[str, Any]] = {}  # a memo: the classes never change


def _hints(cls: type[Record]) -> dict[str, Any]:
    """The fields' types, resolved once per class (annotations are strings here)."""
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = get_type_hints(cls)
    return found


def _encode(value: object) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, tuple):
        return [_encode(item) for item in value]
    return value


def _required(item: dataclasses.Field[Any]) -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _record(cls: type[R], data: object, strict: bool, path: str) -> R:
    if not isinstance(data, Mapping):
        raise EvidenceError(path, f"expected an object, got {_kind(data)}")
    hints = _hints(cls)
    fields = dataclasses.fields(cls)
    names = [item.name for item in fields]
    unknown = [key for key in data if key not in hints]
    if strict and unknown:
        key = unknown[0]
        where = _join(path, str(key))
        raise EvidenceError(where, f"unknown key; {_label(cls)} has {', '.join(names)}")
    values: dict[str, Any] = {}
    for item in fields:
        required = _required(item)
        where = _join(path, item.name)
        if item.name not in data:
            if required:
                raise EvidenceError(where, "missing")
            continue
        try:
            values[item.name] = _value(hints[item.name], data[item.name], strict, where)
        except EvidenceError:
            if strict or required:
                raise
            # lenient: the default stands in for a value this version cannot read
    return cls(**values)


def _value(hint: Any, value: object, strict: bool, path: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return _value(inner, value, strict, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise EvidenceError(path, f"expected an array, got {_kind(value)}")
        item_hint = get_args(hint)[0]
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_value(item_hint, item, strict, _join(path, index)))
            except EvidenceError:
                if strict:
                    raise
                # lenient: an unreadable entry is left out, the rest of the list stays
        return tuple(items)
    if isinstance(hint, type) and issubclass(hint, Record):
        return _record(hint, value, strict, path)
    return _scalar(hint, value, path)


def _scalar(hint: Any, value: object, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise EvidenceError(path, f"expected true or false, got {_kind(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise EvidenceError(path, f"expected an integer, got {_kind(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise EvidenceError(path, "expected a finite number")
            return float(value)
        raise EvidenceError(path, f"expected a number, got {_kind(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise EvidenceError(path, f"expected a string, got {_kind(value)}")
    raise TypeError(f"evidence field {path} has a type the codec does not know: {hint!r}")


def _kind(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _label(cls: type[Record]) -> str:
    return cls.__name__


# --- JSON Schema, for the OpenAPI document ---------------------------------------------------

_SCALARS: Mapping[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema(cls: type[Record]) -> dict[str, Any]:
    """The JSON Schema of the records `cls.from_json` takes strictly (the ingest contract)."""
    hints = _hints(cls)
    properties = {item.name: _schema(hints[item.name]) for item in dataclasses.fields(cls)}
    required = [item.name for item in dataclasses.fields(cls) if _required(item)]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    return schema


def _schema(hint: Any) -> dict[str, Any]:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        found = _schema(inner)
        if "type" in found and isinstance(found["type"], str):
            return {**found, "type": [found["type"], "null"]}
        return {"oneOf": [found, {"type": "null"}]}
    if origin is tuple:
        return {"type": "array", "items": _schema(get_args(hint)[0])}
    if isinstance(hint, type) and issubclass(hint, Record):
        return json_schema(hint)
    return {"type": _SCALARS[hint]}
