"""The one config model: one YAML file, typed, unknown keys rejected.

Errors name the file, the field path and the problem (`ConfigError`). Durations are written
like `30s`, `1m30s`, `500ms`; secrets come from environment variables, never from the file.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from egresswatch.addresses import Nameserver, ProxyRoute, parse_listen
from egresswatch.model import Endpoint, Role, SourceKind, StatusRanges
from egresswatch.settings_yaml import ConfigFileError, read_config_data
from egresswatch.validation import ConfigError as ConfigError  # re-exported: validation.py
from egresswatch.validation import field_path

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """`30s`, `1m30s`, `500ms`, `2h`, `14d` -> seconds. Bare numbers are refused: units matter."""
    if not isinstance(value, str):
        raise ValueError(f"a duration is a string like '30s', '1m30s' or '500ms', not {value!r}")
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"bad duration {value!r}: use e.g. '30s', '1m30s', '500ms', '2h', '14d'")
    if not math.isfinite(total):  # 400 digits of days: float() gives inf
        raise ValueError(f"duration {value[:40]!r} is not a finite length of time")
    return total


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest duration text that parses back to the same value."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit in ("d", "h", "m"):
        if seconds >= _UNIT_SECONDS[unit] and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds / _UNIT_SECONDS[unit]:g}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration, json_schema_input_type=str),
    PlainSerializer(format_duration, return_type=str),
]


def between(low: str, high: str) -> AfterValidator:
    """Bounds for a Duration field, written as durations: `Annotated[Duration, between(...)]`.

    Every duration has both: an unbounded one ends as an OverflowError in a timedelta, a
    scheduler that never fires, or a window that loads the whole database.
    """
    low_s, high_s = parse_duration(low), parse_duration(high)

    def check(seconds: float) -> float:
        if not low_s <= seconds <= high_s:
            raise ValueError(f"{format_duration(seconds)} is out of range: use {low} to {high}")
        return seconds

    return AfterValidator(check)


# The bounds shared by a default and its per-target override.
RoundInterval = Annotated[Duration, between("1s", "1d")]
RoundTimeout = Annotated[Duration, between("10ms", "1d")]
LatencyChange = Annotated[Duration, between("0ms", "1m")]
Retention = Annotated[Duration, between("1h", "3650d")]


def _addresses_as_text(value: object) -> object:
    """Refuse numbers and booleans where addresses are listed: ipaddress takes `true` (YAML's
    `yes`) for 0.0.0.1 and 5 for 0.0.0.5, which nobody writes on purpose."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(
                    f"[{index}]: an address is text like 10.42.1.4 or 10.0.0.0/8, not {item!r}"
                )
    return value


def _nameserver(value: str) -> str:
    Nameserver.parse(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class SourceSettings(_Strict):
    """Who this process is. An agent in a cluster learns it from the Downward API instead."""

    name: str = Field(default_factory=lambda: os.uname().nodename, min_length=1, max_length=253)
    kind: SourceKind = SourceKind.NODE


class DnsSettings(_Strict):
    resolv_conf: Path = Field(
        Path("/etc/resolv.conf"),
        description="the resolv.conf whose nameservers, search and ndots dns_cluster follows",
    )
    upstream: str | None = Field(
        None,
        description="the upstream resolver dns_upstream asks directly, e.g. 168.63.129.16 "
        "(Azure DNS); unset means dns_upstream is skipped, never guessed",
    )

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str | None) -> str | None:
        return None if value is None else _nameserver(value)


class ProxySettings(_Strict):
    url: str = Field(description="http://host:port of the egress proxy")
    username: str | None = None
    password_env: str | None = Field(
        None, description="name of the environment variable holding the proxy password"
    )
    no_proxy: list[str] = Field(
        default_factory=list, description="hosts, domain suffixes and CIDRs reached directly"
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        ProxyRoute.parse(value)
        return value

    @model_validator(mode="after")
    def _password_set(self) -> Self:
        if self.password_env is not None and self.password_env not in os.environ:
            raise ValueError(f"password_env: environment variable {self.password_env} is not set")
        return self

    def password(self) -> str | None:
        return os.environ.get(self.password_env) if self.password_env else None


class ProbeSettings(_Strict):
    """Defaults for every target; a target may override each of them."""

    interval: RoundInterval = Field(
        "30s", validate_default=True, description="time between rounds of one target"
    )
    timeout: RoundTimeout = Field(
        "10s", validate_default=True, description="hard limit for one whole round"
    )
    step_timeout: RoundTimeout = Field(
        "5s", validate_default=True, description="limit for one step of a round"
    )
    expect_status: StatusRanges = Field(
        "200-399", validate_default=True, description="HTTP codes that mean ok"
    )
    method: str = Field("GET", pattern=r"^(GET|HEAD)$")
    trace_every: Annotated[Duration, between("1s", "7d")] = Field(
        "10m",
        validate_default=True,
        description="path_trace runs this often, and in every round that has a failure",
    )
    trace_max_hops: int = Field(30, ge=1, le=64)
    trace_hop_timeout: Annotated[Duration, between("10ms", "30s")] = Field(
        "1s", validate_default=True
    )
    ca_file: Path | None = Field(
        None, description="CA bundle for TLS verification; unset means the system store"
    )

    @model_validator(mode="after")
    def _timeouts_fit(self) -> Self:
        _check_timing(self.interval, self.timeout, self.step_timeout)
        return self


class DetectionSettings(_Strict):
    """Hysteresis: how many rounds make a change. A target may override each field."""

    fail_after: int = Field(3, ge=1, le=100, description="consecutive failed rounds to fail")
    fail_window: tuple[int, int] | None = Field(
        None,
        description="[M, K]: also fail when M of the last K rounds failed (flapping that "
        "never gives fail_after in a row)",
    )
    recover_after: int = Field(2, ge=1, le=100, description="consecutive good rounds to recover")
    stale_after: int = Field(
        3, ge=1, le=100, description="intervals without a round before a source is unknown"
    )
    latency_min_change: LatencyChange = Field(
        "5ms",
        validate_default=True,
        description="the smallest latency rise that degrades a step, however large the ratio: "
        "on a quiet path 1.2 ms -> 2 ms is the prober's host, not a regression",
    )

    @field_validator("fail_window")
    @classmethod
    def _check_window(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 1 <= value[0] <= value[1] <= 1000:
            raise ValueError("fail_window is [M, K] with 1 <= M <= K <= 1000")
        return value


class DetectionOverrides(_Strict):
    fail_after: int | None = Field(None, ge=1, le=100)
    fail_window: tuple[int, int] | None = None
    recover_after: int | None = Field(None, ge=1, le=100)
    stale_after: int | None = Field(None, ge=1, le=100)
    latency_min_change: LatencyChange | None = None


# What a target without `detection:` holds: one shared (frozen) value, not a model each; 5,000
# targets made 5,000 of them (issue 14, docs/performance.md "How cost grows with targets").
NO_OVERRIDES = DetectionOverrides()


class MetricsSettings(_Strict):
    """How much /metrics says (DESIGN.md §4 names the families)."""

    detail: Literal["source", "source_kind"] = Field(
        "source",
        description="labels of egresswatch_step_duration_seconds and "
        "egresswatch_step_results_total: `source` (one series per source, target and step) or "
        "`source_kind` (per pod/node kind instead of per source: a scrape stays small in a "
        "large cluster; step_up, first_failing_step and last_change stay per source). "
        "Needs a restart to change",
    )


class RetentionSettings(_Strict):
    raw: Retention = Field("14d", validate_default=True, description="keep raw results this long")
    minute_rollups: Retention = Field(
        "31d", validate_default=True, description="keep per-minute rollups this long"
    )
    rollups: Retention = Field(
        "400d", validate_default=True, description="keep per-hour rollups this long"
    )
    every: Annotated[Duration, between("1s", "1d")] = Field(
        "1m", validate_default=True, description="how often rollups are built and old rows pruned"
    )

    @model_validator(mode="after")
    def _rollups_outlive_raw(self) -> Self:
        if not self.raw <= self.minute_rollups <= self.rollups:
            raise ValueError("keep raw <= minute_rollups <= rollups: coarser rows outlive finer")
        return self


class TargetSettings(_Strict):
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
    url: str | None = Field(None, description="https://host[:port]/path or http://...")
    address: str | None = Field(None, description="host:port for a plain TCP target")
    role: Role = Role.ENDPOINT
    interval: RoundInterval | None = None
    timeout: RoundTimeout | None = None
    step_timeout: RoundTimeout | None = None
    expect_status: StatusRanges | None = None
    method: str | None = Field(None, pattern=r"^(GET|HEAD)$")
    pinned_ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(
        default_factory=list,
        description="IPs tcp_connect uses when DNS gives none and none is known good",
    )
    ca_file: Path | None = None
    use_proxy: bool = Field(True, description="false: always go direct for this target")
    detection: DetectionOverrides = Field(default_factory=lambda: NO_OVERRIDES)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            if "://" not in value:
                raise ValueError(
                    "a url starts with https:// or http:// (use address: for host:port)"
                )
            Endpoint.parse(value)
        return value

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is not None:
            if "://" in value:
                raise ValueError("an address is host:port (use url: for a URL)")
            Endpoint.parse(value)
        return value

    _pinned_ips_as_text = field_validator("pinned_ips", mode="before")(_addresses_as_text)

    @model_validator(mode="after")
    def _one_location(self) -> Self:
        if (self.url is None) == (self.address is None):
            raise ValueError("give exactly one of url or address")
        # What can be checked without the defaults is checked here, so that it is reported
        # together with field errors elsewhere; the rest waits for Settings.
        if self.interval is not None and self.timeout is not None:
            _check_timing(self.interval, self.timeout, min(self.timeout, self.step_timeout or 0))
        return self

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(self.url or self.address or "")


_SELECTOR_KEY = r"!?\s*[A-Za-z0-9][\w./-]*"
_SELECTOR_VALUE = r"[\w.-]*"
_SELECTOR_TERM = re.compile(
    rf"^\s*(?:{_SELECTOR_KEY}"
    rf"|[A-Za-z0-9][\w./-]*\s*(?:==|!=|=)\s*{_SELECTOR_VALUE}"
    rf"|[A-Za-z0-9][\w./-]*\s+(?:in|notin)\s+\(\s*{_SELECTOR_VALUE}(?:\s*,\s*{_SELECTOR_VALUE})*\s*\))"
    r"\s*$"
)
_DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


def _label_selector(value: str) -> str:
    """A Kubernetes label selector (=, ==, !=, in, notin, exists, !exists), checked for shape
    here so a typo is a config error, not a 400 from the API server at run time."""
    depth, start, terms = 0, 0, []
    for i, char in enumerate(value):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(value[start:i])
            start = i + 1
    terms.append(value[start:])
    for term in terms:
        if term.strip() and not _SELECTOR_TERM.match(term):
            raise ValueError(f"bad label selector term {term.strip()!r} in {value!r}")
    return value.strip()


class LeaderElectionSettings(_Strict):
    """Several controller replicas: once-per-cluster work runs on the holder of a Lease."""

    enabled: bool = Field(
        True, description="elect a leader on a coordination.k8s.io Lease (kubernetes.enabled)"
    )
    lease_name: str = Field("egresswatch-controller", pattern=_DNS_LABEL, description="the Lease")
    lease_namespace: str | None = Field(
        None,
        pattern=_DNS_LABEL,
        description="the Lease's namespace; unset: POD_NAMESPACE, else the service account's",
    )
    identity: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="this replica's name in the Lease; unset: POD_NAME, else HOSTNAME_PID",
    )
    lease_duration: Duration = Field(
        "15s", validate_default=True, description="a silent leader's Lease is free after this"
    )
    renew_deadline: Duration = Field(
        "10s", validate_default=True, description="the leader steps down when not renewed by then"
    )
    retry_period: Duration = Field(
        "2s", validate_default=True, description="time between tries to acquire or renew"
    )

    @model_validator(mode="after")
    def _check_timing(self) -> Self:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "retry_period < renew_deadline < lease_duration is needed, got "
                f"{self.retry_period:g}s, {self.renew_deadline:g}s, {self.lease_duration:g}s"
            )
        return self


class KubernetesSettings(_Strict):
    """Designated sources: which sources should exist, from the cluster's Nodes and Pods."""

    enabled: bool = Field(False, description="watch the Kubernetes API (the controller only)")
    kubeconfig: Path | None = Field(
        None, description="a kubeconfig file; unset: the in-cluster service account"
    )
    context: str | None = Field(None, description="the kubeconfig context; unset: its current one")
    node_sources: bool = Field(True, description="every Node matching node_selector is a source")
    node_selector: str = Field(
        "", description="label selector of the Nodes that are node sources; empty: every Node"
    )
    pod_namespaces: list[Annotated[str, Field(pattern=_DNS_LABEL)]] = Field(
        default_factory=list,
        description="namespaces whose agent pods (pod_selector) are pod sources",
    )
    pod_selector: str = Field(
        "app.kubernetes.io/component=pod-agent",
        description="label selector of the agent pods in pod_namespaces",
    )
    node_agent_service_account: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$",
        description="NAMESPACE/NAME of the node agents' (DaemonSet's) service account: its "
        "projected tokens act for the node source of the node they are bound to",
    )
    leader_election: LeaderElectionSettings = Field(default_factory=LeaderElectionSettings)
    changes_window: Annotated[Duration, between("0s", "1d")] = Field(
        "30m",
        validate_default=True,
        description="cluster changes seen this long before an incident's first failed round "
        "are attached to it",
    )

    @field_validator("node_selector", "pod_selector")
    @classmethod
    def _check_selector(cls, value: str) -> str:
        return _label_selector(value)


@dataclass
class _Lookup:
    """Targets by name, and their merged detection settings, for one targets list."""

    of: list[TargetSettings]
    targets: dict[str, TargetSettings]
    detection: dict[str, DetectionSettings] = field(default_factory=dict)


class RunLimitSettings(_Strict):
    """How often on-demand rounds may be asked for, per target (a token bucket)."""

    burst: int = Field(
        3, ge=1, le=1000, description="on-demand rounds a target may be asked for at once"
    )
    every: Duration = Field(
        "10s",
        validate_default=True,
        description="one more on-demand round of a target is allowed each time this passes",
    )


TOKEN_FIELDS = ("agent_token_env", "read_token_env", "run_token_env")


def _token(variable: str | None) -> str | None:
    return (os.environ.get(variable) or None) if variable else None


class Settings(_Strict):
    """The whole config file."""

    source: SourceSettings = Field(default_factory=SourceSettings)
    listen: str = Field("127.0.0.1:9108", description="HOST:PORT for the API and /metrics")
    database: str = Field(
        "sqlite+aiosqlite:///egresswatch.db", description="SQLAlchemy URL of the database"
    )
    database_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding the database URL (in Kubernetes, "
        "from a Secret: a PostgreSQL password stays out of the config file); when set, it gives "
        "`database`, which the file must then leave out",
    )
    dns: DnsSettings = Field(default_factory=DnsSettings)
    proxy: ProxySettings | None = None
    proxy_from_environment: bool = Field(
        True, description="honour HTTP(S)_PROXY and NO_PROXY when no proxy is configured"
    )
    egress_devices: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list,
        description="addresses of the firewall / NVA / NAT on the egress path (CIDR or IP)",
    )
    probes: ProbeSettings = Field(default_factory=ProbeSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    # 256: a TCP-only round holds its connection for a 150 ms read (a peer that accepts and
    # resets), so 64 slots capped one process at about 420 TCP rounds/s (docs/performance.md).
    max_concurrent_rounds: int = Field(
        256, ge=1, le=10000, description="rounds in flight at once in this process"
    )
    agent_token_env: str | None = Field(
        None,
        description="name of the environment variable holding the bearer token agents present "
        "to POST /api/v1/results and GET /api/v1/plan; unset means both are closed",
    )
    read_token_env: str | None = Field(
        None,
        description="name of the environment variable holding the bearer token that reads "
        "GET /api/v1/* (plan excepted) and /metrics; unset means reading is open to anyone "
        "who reaches the port",
    )
    run_token_env: str | None = Field(
        None,
        description="name of the environment variable holding the bearer token that runs "
        "on-demand rounds (POST /api/v1/targets/{target}/run) and reads like the read token; "
        "unset means on-demand rounds are closed",
    )
    run_limit: RunLimitSettings = Field(default_factory=RunLimitSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    targets: list[TargetSettings] = Field(default_factory=list, validate_default=True)
    _held_lookup: _Lookup | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _database_from_env(cls, data: Any) -> Any:
        """`database_env` names the variable that gives `database`. Both in one file is refused
        unless they agree (a settings dump validated again holds both)."""
        if not isinstance(data, dict) or not isinstance(data.get("database_env"), str):
            return data
        variable = data["database_env"]
        url = os.environ.get(variable)
        if not url:
            raise ValueError(f"database_env: environment variable {variable} is not set")
        try:
            check_database_url(url)
        except ValueError as exc:
            raise ValueError(f"database_env: {variable}: {exc}") from None
        if "database" in data and data["database"] != url:
            raise ValueError(f"database: give database or database_env ({variable}), not both")
        return {**data, "database": url}

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    _egress_devices_as_text = field_validator("egress_devices", mode="before")(_addresses_as_text)

    @field_validator("database")
    @classmethod
    def _check_database(cls, value: str) -> str:
        check_database_url(value)
        return value

    @field_validator("targets")
    @classmethod
    def _targets_wanted(
        cls, value: list[TargetSettings], info: ValidationInfo
    ) -> list[TargetSettings]:
        # Only the commands that watch (Use.SERVICE) need a target; see `Use`.
        if not value and info.context and info.context.get("targets") is True:
            raise ValueError(
                f"no targets configured: {Use.SERVICE.value} need at least one "
                f"({Use.TOOL.value} do not)"
            )
        return value

    @model_validator(mode="after")
    def _targets_consistent(self) -> Self:
        seen: set[str] = set()
        for index, target in enumerate(self.targets):
            if target.name in seen:
                raise ValueError(f"targets[{index}].name: duplicate target name {target.name!r}")
            seen.add(target.name)
            timing = self.timing(target)
            try:
                _check_timing(*timing)
            except ValueError as exc:
                raise ValueError(f"targets[{index}] ({target.name}): {exc}") from None
        return self

    @model_validator(mode="after")
    def _tokens_set(self, info: ValidationInfo) -> Self:
        # Only the controller checks tokens; `check` and `db upgrade` read the same file
        # without needing them (validation context {"agent_token": False}).
        wanted = not (info.context and info.context.get("agent_token") is False)
        if not wanted:
            return self
        for setting in TOKEN_FIELDS:
            variable = getattr(self, setting)
            if variable is not None and not os.environ.get(variable):
                raise ValueError(f"{setting}: environment variable {variable} is not set")
        return self

    def agent_token(self) -> str | None:
        """The agents' token (ingest and plan); None: both closed."""
        return _token(self.agent_token_env)

    def read_token(self) -> str | None:
        """The read token (GET /api/v1/*, /metrics); None: reading is open."""
        return _token(self.read_token_env)

    def run_token(self) -> str | None:
        """The run token (on-demand rounds, and reading); None: on-demand rounds closed."""
        return _token(self.run_token_env)

    def target(self, name: str) -> TargetSettings | None:
        return self._lookup().targets.get(name)

    def detection_for(self, target: TargetSettings) -> DetectionSettings:
        """The hysteresis for a target: its overrides on top of the global settings."""
        lookup = self._lookup()
        if lookup.targets.get(target.name) is not target:
            return self._merged_detection(target)  # not one of ours: nothing to remember
        found = lookup.detection.get(target.name)
        if found is None:
            found = lookup.detection[target.name] = self._merged_detection(target)
        return found

    def _lookup(self) -> _Lookup:
        # A name is looked up several times a round and once per target in every staleness
        # sweep: a scan made that sweep quadratic (1.1 s at 5,000 targets). Built at first use
        # for this targets list; a model_copy with other targets has another list, so another
        # lookup. Read from pydantic's private dict, not as `self._held_lookup`: that goes
        # through BaseModel.__getattr__, 3 µs, and a round asks three times.
        private = self.__pydantic_private__
        held: _Lookup | None = private.get("_held_lookup") if private is not None else None
        if held is None or held.of is not self.targets:
            held = self._held_lookup = _Lookup(self.targets, {t.name: t for t in self.targets})
        return held

    def _merged_detection(self, target: TargetSettings) -> DetectionSettings:
        overrides = target.detection
        # Attributes, not model_dump(): that would give durations back as text.
        chosen = {
            name: getattr(overrides, name)
            for name in type(overrides).model_fields
            if getattr(overrides, name) is not None
        }
        if not chosen:  # the usual case: one shared model, not a copy a target (issue 14)
            return self.detection
        return self.detection.model_copy(update=chosen)

    def timing(self, target: TargetSettings) -> tuple[float, float, float]:
        """(interval, timeout, step_timeout) for a target, defaults filled in."""
        return (
            target.interval if target.interval is not None else self.probes.interval,
            target.timeout if target.timeout is not None else self.probes.timeout,
            target.step_timeout if target.step_timeout is not None else self.probes.step_timeout,
        )


def _check_timing(interval: float, timeout: float, step_timeout: float) -> None:
    if interval < 1.0:
        raise ValueError(f"interval {format_duration(interval)} is shorter than 1s")
    if timeout > interval:
        raise ValueError(
            f"timeout {format_duration(timeout)} is longer than its interval "
            f"{format_duration(interval)}: rounds would overlap"
        )
    if step_timeout > timeout:
        raise ValueError(
            f"step_timeout {format_duration(step_timeout)} is longer than the round "
            f"timeout {format_duration(timeout)}"
        )


_PLAIN_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_DATABASE_EXAMPLE = "e.g. sqlite+aiosqlite:///egresswatch.db or postgresql+asyncpg://user@host/db"


def check_database_url(value: str) -> None:
    """Refuse a database URL the storage could not open: unparsable, another driver, a bad
    port, a SQLite URL with a host. Plain `sqlite://` and `postgresql://` name the async
    drivers (storage/schema.py maps them)."""
    # Imported here: the agent reads this model too and has no database (nor the 160 ms).
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if "\x00" in value:
        raise ValueError("a database URL has no NUL character")
    try:
        url = make_url(value)
        port = url.port
    except (ArgumentError, ValueError):
        raise ValueError(f"not a database URL: use {_DATABASE_EXAMPLE}") from None
    driver = url.drivername if "+" in url.drivername else _PLAIN_DRIVERS.get(url.drivername)
    if driver not in _PLAIN_DRIVERS.values():
        raise ValueError(
            f"unsupported database driver {url.drivername!r}: use "
            f"{' or '.join(_PLAIN_DRIVERS.values())} ({_DATABASE_EXAMPLE})"
        )
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad port {port} in the database URL")
    if driver == "sqlite+aiosqlite" and url.host:
        raise ValueError(
            "a SQLite URL names a file, not a host: sqlite+aiosqlite:///relative.db or "
            "sqlite+aiosqlite:////absolute/path.db"
        )


class Use(enum.Enum):
    """Which commands a config file is read for: what they need beyond a valid file.

    SERVICE (`run`, `controller`, a reload of either, and `config validate`, which answers for
    the strictest): at least one target, and the variables named by `agent_token_env`,
    `read_token_env` and `run_token_env` set.
    TOOL (`check`, `db upgrade`): neither; every other rule is the same for both.
    """

    SERVICE = "run and controller"
    TOOL = "check and db upgrade"


def load_settings(
    path: Path, overrides: Mapping[str, Any] | None = None, *, use: Use = Use.SERVICE
) -> Settings:
    """The one validation every command that reads a config file goes through.

    Reads `path` (UTF-8, bounded: settings_yaml.py), applies `overrides` (the command line's
    flags, by field name) and validates for `use`. Every problem is reported at once, as
    `FILE: field.path: problem`, in a ConfigError; nothing else is raised.
    """
    try:
        data = read_config_data(path)
    except ConfigFileError as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
    overrides = dict(overrides or {})
    data.update(overrides)
    return settings_for(data, str(path), use, from_flags=set(overrides))


def settings_for(
    data: Mapping[str, Any],
    origin: str,
    use: Use,
    *,
    from_flags: set[str] | frozenset[str] = frozenset(),
) -> Settings:
    """`data` validated for the commands of `use`; problems in fields named by `from_flags`
    say that the value came from the command line, not from `origin`."""
    context = {"agent_token": use is Use.SERVICE, "targets": use is Use.SERVICE}
    return _validate(data, origin, context, from_flags)


def settings_from_dict(
    data: Mapping[str, Any], origin: str = "<config>", *, agent_token: bool = True
) -> Settings:
    """The model alone, for settings built in code: no command's needs (`settings_for`)."""
    return _validate(data, origin, {"agent_token": agent_token}, frozenset())


def _validate(
    data: Mapping[str, Any],
    origin: str,
    context: dict[str, bool],
    from_flags: set[str] | frozenset[str],
) -> Settings:
    try:
        return Settings.model_validate(dict(data), context=context)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            message = " ".join(str(error["msg"]).removeprefix("Value error, ").split())
            where = field_path(error["loc"])
            if where.split(".")[0].split("[")[0] in from_flags:
                where += " (from the command line)"
            problems.append(f"{origin}: {where}: {message}" if where else f"{origin}: {message}")
        raise ConfigError(problems) from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (config/egresswatch.schema.json is this, written)."""
    schema = Settings.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "egresswatch configuration"
    return schema
