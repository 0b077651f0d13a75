"""Fuzzing the config loader: any file ends in a valid config or a clear error, exit 2.

The property, for every input: `load_settings` returns a Settings or raises ConfigError whose
problems are one-line `FILE: ...` messages, for both kinds of command (`Use`); and
`egresswatch config validate FILE` returns 0 or 2 with no other exception. Inputs: arbitrary
bytes, text in several encodings, YAML documents built around the real keys (so that the
model's own validators are reached, not only the parser), and mutations of the shipped
config/example.yaml and config/demo.yaml.

Deterministic in CI: `derandomize=True` and no example database, so every run tries the same
inputs; the numbers of examples keep the whole file near 10 s.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from egresswatch.cli import main
from egresswatch.settings import (
    ConfigError,
    DetectionOverrides,
    DetectionSettings,
    DnsSettings,
    ProbeSettings,
    ProxySettings,
    RetentionSettings,
    Settings,
    SourceSettings,
    TargetSettings,
    Use,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [(ROOT / "config" / name).read_bytes() for name in ("example.yaml", "demo.yaml")]

FUZZ = settings(
    max_examples=300,
    deadline=None,  # a loaded CI machine must not turn a slow example into a failure
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_names = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_file(folder: Path, content: bytes) -> None:
    """The property, for one file's content."""
    path = folder / f"c{next(_names)}.yaml"
    path.write_bytes(content)
    for use in Use:
        try:
            assert isinstance(load_settings(path, use=use), Settings)
        except ConfigError as exc:
            assert exc.problems, "a ConfigError names at least one problem"
            for problem in exc.problems:
                assert problem.startswith(f"{path}: "), problem
                assert "\n" not in problem, problem
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["config", "validate", str(path)])
    assert code in (0, 2)
    assert (code == 0) == (err.getvalue() == ""), err.getvalue()
    path.unlink()


# -- strategies -------------------------------------------------------------------------------

# The model's keys at every level, so that generated documents reach its validators.
KEYS = [
    *Settings.model_fields,
    "name",
    "kind",
    "url",
    "address",
    "role",
    "interval",
    "timeout",
    "step_timeout",
    "expect_status",
    "method",
    "trace_every",
    "trace_max_hops",
    "trace_hop_timeout",
    "ca_file",
    "pinned_ips",
    "use_proxy",
    "fail_after",
    "fail_window",
    "recover_after",
    "stale_after",
    "latency_min_change",
    "raw",
    "minute_rollups",
    "rollups",
    "every",
    "resolv_conf",
    "upstream",
    "username",
    "password_env",
    "no_proxy",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "30s",
            "0s",
            "1m30s",
            "500ms",
            "99999999999999999999d",
            "1e308s",
            "https://x.test/",
            "http://127.0.0.1:1/",
            "127.0.0.1:9",
            "[::1]:80",
            "sqlite+aiosqlite:///x.db",
            "postgresql+asyncpg://u@h:5432/d",
            "mysql://x",
            "200-399",
            "node",
            "pod",
            "control",
            "endpoint",
            "10.0.0.0/8",
            "t-1",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=25,
)
# Values a real file would hold, per key, so that whole sections validate and the cross-field
# rules (timeouts within intervals, retention order, unique names) are reached too.
DURATIONS = st.one_of(
    st.sampled_from(["100ms", "1s", "5s", "30s", "10m", "1h", "1d", "7d", "400d", "3650d"]),
    st.builds("{}{}".format, st.integers(0, 10**6), st.sampled_from(["ms", "s", "m", "h", "d"])),
)
COUNTS = st.integers(min_value=-1, max_value=1200)


def one_of_these(*values: object) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


BY_KEY: dict[str, st.SearchStrategy[Any]] = {
    **dict.fromkeys(
        [
            "interval",
            "timeout",
            "step_timeout",
            "trace_every",
            "trace_hop_timeout",
            "latency_min_change",
            "raw",
            "minute_rollups",
            "rollups",
            "every",
        ],
        DURATIONS,
    ),
    **dict.fromkeys(
        ["fail_after", "recover_after", "stale_after", "trace_max_hops", "max_concurrent_rounds"],
        COUNTS,
    ),
    "fail_window": st.lists(COUNTS, min_size=2, max_size=2),
    "expect_status": one_of_these("200-399", "200,204", 200, "700", [200, 204]),
    "method": one_of_these("GET", "HEAD", "POST"),
    "role": one_of_these("endpoint", "control", "other"),
    "kind": one_of_these("node", "pod", "vm"),
    "name": one_of_these("a", "web", "node-1", "Bad Name"),
    "url": one_of_these("https://x.test/", "http://127.0.0.1:1/", "ftp://x", "https://"),
    "address": one_of_these("127.0.0.1:9", "x.test:99999", "[::1]:80", "x"),
    "pinned_ips": st.lists(one_of_these("10.0.0.1", "::1", "x"), max_size=3),
    "use_proxy": st.booleans(),
    "proxy_from_environment": st.booleans(),
    "ca_file": one_of_these("/nonexistent/ca.pem", ""),
    "resolv_conf": one_of_these("/nonexistent/resolv.conf", ""),
    "upstream": one_of_these("127.0.0.1", "127.0.0.1#53", "x"),
    "password_env": one_of_these("PATH", "EW_FUZZ_UNSET"),
    "agent_token_env": one_of_these("PATH", "EW_FUZZ_UNSET"),
    "no_proxy": st.lists(one_of_these(".svc", "10.0.0.0/8", "x"), max_size=3),
    "listen": one_of_these("127.0.0.1:0", "[::1]:9108", "x", "0.0.0.0:70000"),
    "database": one_of_these(
        "sqlite+aiosqlite:///x.db", "postgresql+asyncpg://u@h/d", "mysql://x", "x", "sqlite://h/x"
    ),
}


def section(model: type[BaseModel], **fixed: Any) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping of some of `model`'s own keys (and `fixed` ones) to values fit for each key,
    now and then anything at all."""
    optional = {
        key: st.one_of(BY_KEY.get(key, VALUES), BY_KEY.get(key, VALUES), VALUES)
        for key in model.model_fields
        if key not in fixed
    }
    return st.fixed_dictionaries({k: st.just(v) for k, v in fixed.items()}, optional=optional)


BY_KEY["detection"] = st.one_of(section(DetectionOverrides), VALUES)
TARGET = st.one_of(
    section(TargetSettings, name="t", address="127.0.0.1:9"),
    section(TargetSettings, name="u", url="https://x.test/"),
    section(TargetSettings),
)
SECTIONS: dict[str, st.SearchStrategy[Any]] = {
    "source": section(SourceSettings),
    "dns": section(DnsSettings),
    "proxy": section(ProxySettings, url="http://127.0.0.1:3128"),
    "probes": section(ProbeSettings),
    "retention": section(RetentionSettings),
    "detection": section(DetectionSettings),
    "egress_devices": st.lists(st.sampled_from(["10.0.0.0/8", "10.1.1.1", "::1", "x"])),
}
DOCUMENTS = st.fixed_dictionaries(
    {"targets": st.lists(TARGET, max_size=3)},
    optional={
        key: st.one_of(SECTIONS.get(key, BY_KEY.get(key, VALUES)), VALUES)
        for key in Settings.model_fields
        if key != "targets"
    },
)
ENCODINGS = st.sampled_from(
    ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252", "ascii"]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A shipped config with a few byte edits: cut, insert, duplicate or swap a line."""
    content = draw(st.sampled_from(SHIPPED))
    for _ in range(draw(st.integers(1, 4))):
        lines = content.splitlines(keepends=True)
        at = draw(st.integers(0, max(0, len(lines) - 1)))
        edit = draw(st.sampled_from(["cut", "insert", "duplicate", "swap", "bytes"]))
        if edit == "cut":
            start = draw(st.integers(0, len(content)))
            content = content[:start] + content[start + draw(st.integers(1, 40)) :]
        elif edit == "insert":
            start = draw(st.integers(0, len(content)))
            content = content[:start] + draw(st.binary(min_size=1, max_size=8)) + content[start:]
        elif edit == "duplicate" and lines:
            content = b"".join([*lines[: at + 1], lines[at], *lines[at + 1 :]])
        elif edit == "swap" and len(lines) > 1:
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
            content = b"".join(lines)
        else:
            start = draw(st.integers(0, len(content)))
            replacement = draw(st.sampled_from([b":", b"-", b"[", b"{", b"&a", b"*a", b"!!"]))
            content = content[:start] + replacement + content[start + 1 :]
    return content


# -- the properties -----------------------------------------------------------------------


@FUZZ
@given(content=st.binary(max_size=600))
def test_any_bytes(folder: Path, content: bytes) -> None:
    check_file(folder, content)


@FUZZ
@given(text=st.text(max_size=300), encoding=ENCODINGS)
def test_any_text_in_any_encoding(folder: Path, text: str, encoding: str) -> None:
    check_file(folder, text.encode(encoding, errors="replace"))


@FUZZ
@given(document=DOCUMENTS, encoding=ENCODINGS)
def test_yaml_documents_around_the_real_keys(
    folder: Path, document: dict[str, Any], encoding: str
) -> None:
    text = yaml.safe_dump(document, allow_unicode=True)
    check_file(folder, text.encode(encoding, errors="replace"))


@FUZZ
@given(content=mutated())
def test_mutations_of_the_shipped_configs(folder: Path, content: bytes) -> None:
    check_file(folder, content)


def test_the_shipped_configs_themselves(folder: Path) -> None:
    for content in SHIPPED:
        check_file(folder, content)
