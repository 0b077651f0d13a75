"""The one config model: one YAML file, typed, unknown keys rejected.

Errors name the file, the field path and the problem (`ConfigError`). Durations are written
like `30s`, `1m30s`, `500ms`; secrets come from environment variables, never from the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
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

from egresswatch.addresses import Nameserver, ProxyRoute
from egresswatch.model import Endpoint, Role, SourceKind, StatusRanges

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


def _parse_status(value: object) -> StatusRanges:
    if isinstance(value, StatusRanges):
        return value
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ValueError("expect_status is a string like '200-399' or '200,204'")
    return StatusRanges.parse(value)


ExpectStatus = Annotated[
    StatusRanges,
    BeforeValidator(_parse_status, json_schema_input_type=str | int | list[int]),
    PlainSerializer(str, return_type=str),
]


def _nameserver(value: str) -> str:
    Nameserver.parse(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class SourceSettings(_Strict):
    """Who this process is. An agent in a cluster learns it from the Downward API instead."""

    name: str = Field(default_factory=lambda: os.uname().nodename, min_length=1)
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

    interval: Duration = Field(
        "30s", validate_default=True, description="time between rounds of one target"
    )
    timeout: Duration = Field(
        "10s", validate_default=True, description="hard limit for one whole round"
    )
    step_timeout: Duration = Field(
        "5s", validate_default=True, description="limit for one step of a round"
    )
    expect_status: ExpectStatus = Field(
        "200-399", validate_default=True, description="HTTP codes that mean ok"
    )
    method: str = Field("GET", pattern=r"^(GET|HEAD)$")
    trace_every: Duration = Field(
        "10m",
        validate_default=True,
        description="path_trace runs this often, and in every round that has a failure",
    )
    trace_max_hops: int = Field(30, ge=1, le=64)
    trace_hop_timeout: Duration = Field("1s", validate_default=True)
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
    latency_min_change: Duration = Field(
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
    latency_min_change: Duration | None = None


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
    raw: Duration = Field("14d", validate_default=True, description="keep raw results this long")
    minute_rollups: Duration = Field(
        "31d", validate_default=True, description="keep per-minute rollups this long"
    )
    rollups: Duration = Field(
        "400d", validate_default=True, description="keep per-hour rollups this long"
    )
    every: Duration = Field(
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
    interval: Duration | None = None
    timeout: Duration | None = None
    step_timeout: Duration | None = None
    expect_status: ExpectStatus | None = None
    method: str | None = Field(None, pattern=r"^(GET|HEAD)$")
    pinned_ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(
        default_factory=list,
        description="IPs tcp_connect uses when DNS gives none and none is known good",
    )
    ca_file: Path | None = None
    use_proxy: bool = Field(True, description="false: always go direct for this target")
    detection: DetectionOverrides = Field(default_factory=DetectionOverrides)

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


class Settings(_Strict):
    """The whole config file."""

    source: SourceSettings = Field(default_factory=SourceSettings)
    listen: str = Field("127.0.0.1:9108", description="HOST:PORT for the API and /metrics")
    database: str = Field(
        "sqlite+aiosqlite:///egresswatch.db", description="SQLAlchemy URL of the database"
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
    max_concurrent_rounds: int = Field(
        64, ge=1, le=10000, description="rounds in flight at once in this process"
    )
    agent_token_env: str | None = Field(
        None,
        description="name of the environment variable holding the bearer token agents present "
        "to POST /api/v1/results; unset means ingest is closed",
    )
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    targets: list[TargetSettings] = Field(default_factory=list)
    _held_lookup: _Lookup | None = PrivateAttr(None)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
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
    def _agent_token_set(self, info: ValidationInfo) -> Self:
        # Only the controller takes agents' results; `check` and `db upgrade` read the same
        # file without needing the token (validation context {"agent_token": False}).
        wanted = not (info.context and info.context.get("agent_token") is False)
        if wanted and self.agent_token_env is not None and not os.environ.get(self.agent_token_env):
            raise ValueError(
                f"agent_token_env: environment variable {self.agent_token_env} is not set"
            )
        return self

    def agent_token(self) -> str | None:
        return os.environ.get(self.agent_token_env) if self.agent_token_env else None

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
        # lookup.
        held = self._held_lookup
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


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[v6]:PORT` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"bad listen address {value!r}: use HOST:PORT, e.g. 127.0.0.1:9108")
    return host, int(port)


class ConfigError(Exception):
    """A config that cannot be used. `problems` are `FILE: field.path: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def field_path(loc: tuple[int | str, ...]) -> str:
    """Pydantic's error location as a field path people read: `targets[1].url`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in {"str", "int", "list[int]"}:
            continue  # union/validator branches pydantic puts in the location
        else:
            path += f".{part}" if path else part
    return path


def load_settings(
    path: Path, overrides: Mapping[str, Any] | None = None, *, agent_token: bool = True
) -> Settings:
    """Read, parse and validate a config file; every problem is reported at once.

    `agent_token=False`: a command that takes no agents' results does not need the variable
    named by `agent_token_env` to be set.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: {where}not valid YAML: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of settings"])
    data.update(overrides or {})
    return settings_from_dict(data, origin=str(path), agent_token=agent_token)


def settings_from_dict(
    data: Mapping[str, Any], origin: str = "<config>", *, agent_token: bool = True
) -> Settings:
    try:
        return Settings.model_validate(dict(data), context={"agent_token": agent_token})
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            message = str(error["msg"]).removeprefix("Value error, ")
            where = field_path(error["loc"])
            problems.append(f"{origin}: {where}: {message}" if where else f"{origin}: {message}")
        raise ConfigError(problems) from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (config/egresswatch.schema.json is this, written)."""
    schema = Settings.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "egresswatch configuration"
    return schema
