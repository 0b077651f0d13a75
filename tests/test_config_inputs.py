"""A bad config costs nothing: every command that reads a file says the same, exit 2, no traceback.

Each input below once made `config validate` and `run` disagree, or gave a traceback. The
commands run in this process through `main()` (they stop at the config, before any set-up);
one test runs the real `egresswatch` processes for the inputs that used to crash them.
"""

from __future__ import annotations

import codecs
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from egresswatch.cli import main
from egresswatch.settings import ConfigError, Use, load_settings
from egresswatch.settings_yaml import MAX_BYTES, MAX_DEPTH, MAX_NODES, parse_config_text

GOOD = (
    "listen: 127.0.0.1:0\n"
    "database: sqlite+aiosqlite:///unused.db\n"
    "proxy_from_environment: false\n"
    "targets:\n"
    "  - name: shop\n"
    "    address: 127.0.0.1:9\n"
)


def _with(**lines: str) -> bytes:
    """GOOD with some top-level lines put in front (a key given here must not be in GOOD)."""
    return ("".join(f"{key}: {value}\n" for key, value in lines.items()) + GOOD).encode()


def _database(url: str) -> bytes:
    return GOOD.replace("sqlite+aiosqlite:///unused.db", url).encode()


# (id, file content, what the one problem line says after "FILE: ")
BAD_FOR_EVERY_COMMAND = [
    ("empty", b"", "the file is empty"),
    ("only-comments", b"# nothing yet\n", "the file is empty"),
    ("binary", bytes(range(256)) * 4, "byte 0 (0x00): a NUL byte: a binary file"),
    ("binary-no-nul", bytes(range(1, 256)) * 4, "byte 127 (0x80): not UTF-8 text"),
    ("utf-16", GOOD.encode("utf-16"), "byte 0: the file is UTF-16 (byte order mark)"),
    ("utf-16-be", codecs.BOM_UTF16_BE + GOOD.encode("utf-16-be"), "the file is UTF-16"),
    ("utf-32", GOOD.encode("utf-32"), "byte 0: the file is UTF-32"),
    ("latin-1", b"source: {name: caf\xe9}\n" + GOOD.encode(), "byte 18 (0xe9): not UTF-8 text"),
    ("nul", b"listen: 127.0.0.1:0\x00\n", "byte 19 (0x00): a NUL byte"),
    (
        "control-char",
        b"listen: 127.0.0.1:0\x07\n",
        "position 19: not valid YAML: unacceptable character #x0007",
    ),
    ("deep-lists", b"a: " + b"[" * 5000 + b"]" * 5000, "nest"),  # libyaml: "nesting depth"
    ("deep-maps", b"a: " + b"{b: " * 3000 + b"1" + b"}" * 3000, "nest"),
    ("deep-40", b"a: " + b"[" * 40 + b"]" * 40, f"column 35: nested deeper than {MAX_DEPTH}"),
    ("deep-block", b"".join(b"  " * i + b"k:\n" for i in range(200)), "nested deeper"),
    (
        "billion-laughs",
        b'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
        + b"".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 10)}]\n".encode()
            for i in range(8)
        ),
        f"more than {MAX_NODES} values once aliases are expanded",
    ),
    (
        "alias-depth",
        b"a: &a " + b"[" * 20 + b"]" * 20 + b"\nb: " + b"[" * 20 + b"*a" + b"]" * 20 + b"\n",
        f"line 2, column 11: nested deeper than {MAX_DEPTH} levels once aliases are expanded",
    ),
    ("alias-cycle", b"a: &a [1, *a]\n" + GOOD.encode(), "an alias refers to the anchor"),
    ("too-large", b"# " + b"x" * MAX_BYTES + b"\n" + GOOD.encode(), "larger than 1024 KiB"),
    (
        "duplicate-targets",
        GOOD.encode() + b"targets: []\n",
        "targets: given twice (lines 4 and 7): only one can count",
    ),
    (
        "duplicate-nested",
        _with(probes="{interval: 30s, interval: 1m}"),
        "probes.interval: given twice (lines 1 and 1)",
    ),
    ("list-top", b"- a\n- b\n", "the top level must be a mapping"),
    ("yes-address", _with(egress_devices="[yes]"), "egress_devices: [0]: an address is text"),
    ("int-address", _with(egress_devices="[5]"), "egress_devices: [0]: an address is text"),
    ("odd-key", b'source: {"a\\nb": 1}\n' + GOOD.encode(), "source['a\\nb']: Extra inputs"),
    ("scalar-top", b"just words\n", "the top level must be a mapping"),
    ("two-documents", GOOD.encode() + b"---\n" + GOOD.encode(), "expected a single document"),
    ("bad-date", b"when: 2001-02-30\n" + GOOD.encode(), "not a valid YAML value"),
    ("python-tag", b"x: !!python/object:os.system [ls]\n", "not valid YAML"),
    ("interval-huge", _with(probes="{interval: 1000000d}"), "probes.interval: 1e+06d is out of"),
    ("interval-inf", _with(probes="{interval: .inf}"), "probes.interval: a duration is a"),
    (
        "interval-overflow",
        _with(probes="{interval: " + "9" * 400 + "d}"),
        "probes.interval: duration '9999",
    ),
    ("interval-zero", _with(probes="{interval: 0s}"), "probes.interval: 0ms is out of range"),
    ("timeout-zero", _with(probes="{timeout: 0s}"), "probes.timeout: 0ms is out of range"),
    ("trace-every", _with(probes="{trace_every: 400d}"), "probes.trace_every: 400d is out of"),
    ("hop-timeout", _with(probes="{trace_hop_timeout: 1h}"), "probes.trace_hop_timeout: 1h is"),
    ("retention-raw", _with(retention="{raw: 10m}"), "retention.raw: 10m is out of range"),
    ("retention-every", _with(retention="{every: 2d}"), "retention.every: 2d is out of range"),
    ("latency", _with(detection="{latency_min_change: 1h}"), "detection.latency_min_change: 1h"),
    ("database-not-a-url", _database("notaurl"), "database: not a database URL"),
    ("database-driver", _database("mysql://u@127.0.0.1/x"), "database: unsupported database"),
    ("database-port", _database("postgresql+asyncpg://u@h:port/x"), "database: not a database"),
    ("database-port-range", _database("postgresql://u@h:70000/x"), "database: bad port 70000"),
    ("database-sqlite-host", _database("sqlite+aiosqlite://h/x.db"), "database: a SQLite URL"),
    ("source-name-long", _with(source="{name: " + "n" * 254 + "}"), "source.name: String should"),
]
BAD_FOR_THE_SERVICE = [
    ("no-targets", b"listen: 127.0.0.1:0\n", "targets: no targets configured: run and controller"),
    ("targets-empty", b"targets: []\n", "targets: no targets configured"),
]


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("case", "content", "problem"), BAD_FOR_EVERY_COMMAND, ids=[c[0] for c in BAD_FOR_EVERY_COMMAND]
)
def test_every_command_refuses_a_bad_file_alike(
    case: str, content: bytes, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(content)
    started = time.perf_counter()
    code, out, said = _run_cli(["config", "validate", str(path)], capsys)
    elapsed = time.perf_counter() - started
    assert code == 2 and out == "", said
    assert said.startswith(f"{path}: "), said
    assert problem in said
    assert elapsed < 5, f"{case}: {elapsed:.1f} s"  # a bomb is refused, not expanded
    commands = (
        ["run", "--config", str(path)],
        ["controller", "--config", str(path)],
        ["check", "--config", str(path), "127.0.0.1:9"],
        ["db", "upgrade", "--config", str(path)],
    )
    for command in commands:
        assert _run_cli(command, capsys) == (2, "", said), command


@pytest.mark.parametrize(
    ("case", "content", "problem"), BAD_FOR_THE_SERVICE, ids=[c[0] for c in BAD_FOR_THE_SERVICE]
)
def test_a_file_without_targets_serves_the_tools_only(
    case: str, content: bytes, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(content)
    code, out, said = _run_cli(["config", "validate", str(path)], capsys)
    assert code == 2 and out == ""
    first, verdict = said.splitlines()
    assert first.startswith(f"{path}: {problem}")
    assert first.endswith("need at least one (check and db upgrade do not)")
    assert verdict == f"{path}: good for check and db upgrade only, not for run and controller"
    service_problem = first + "\n"
    for command in (["run", "--config", str(path)], ["controller", "--config", str(path)]):
        assert _run_cli(command, capsys) == (2, "", service_problem), command
    assert load_settings(path, use=Use.TOOL).targets == []


def test_what_is_fine_stays_fine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A UTF-8 byte order mark, anchors and merge keys, and the bounds themselves."""
    path = tmp_path / "fine.yaml"
    path.write_bytes(
        codecs.BOM_UTF8
        + b"probes: &defaults {interval: 1d, timeout: 10ms, step_timeout: 10ms}\n"
        + b"retention: {raw: 1h, minute_rollups: 1h, rollups: 3650d, every: 1s}\n"
        + b"detection: {latency_min_change: 0ms}\n"
        + b"source: {name: caf\xc3\xa9}\n"
        + GOOD.encode()
        + b"  - {name: b, address: '127.0.0.1:10', <<: *defaults, interval: 2m}\n"
    )
    code, out, _ = _run_cli(["config", "validate", str(path)], capsys)
    assert (code, out) == (0, f"{path}: ok (2 targets): good for every command\n")
    settings = load_settings(path)
    assert settings.source.name == "café"
    assert settings.timing(settings.targets[1]) == (120.0, 0.01, 0.01)  # explicit beats merged


def test_a_huge_flat_file_is_refused_in_about_a_second(tmp_path: Path) -> None:
    path = tmp_path / "flat.yaml"
    path.write_bytes(b"a: [" + b"1," * (MAX_BYTES // 2 - 4) + b"1]\n")  # 500,000 values
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=f"more than {MAX_NODES} values"):
        load_settings(path)
    print(f"1 MiB flat list refused in {time.perf_counter() - started:.2f} s")


def test_a_flag_that_is_wrong_is_named_as_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    code, _, said = _run_cli(["run", "--config", str(path), "--db", "nope"], capsys)
    assert code == 2
    assert said.startswith(f"{path}: database (from the command line): not a database URL")
    code, _, said = _run_cli(["db", "upgrade", "--db", "mysql://x/y"], capsys)
    assert code == 2
    assert said.startswith("--db: database: unsupported database driver 'mysql'")


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.yaml", tmp_path, tmp_path / "a\x00b.yaml"):
        with pytest.raises(ConfigError, match="cannot read"):
            load_settings(path)


def test_the_real_commands_exit_2_without_a_traceback(tmp_path: Path) -> None:
    """The inputs that crashed `run` (or validate) before, through the real entry point."""
    cases = {name: content for name, content, _ in BAD_FOR_EVERY_COMMAND}
    started = []
    runs = [
        ("binary-no-nul", ["config", "validate"]),
        ("binary-no-nul", ["run", "--config"]),
        ("interval-huge", ["run", "--config"]),
        ("database-not-a-url", ["controller", "--config"]),
    ]
    for name, command in runs:
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(cases[name])
        # All at once: each is a second of imports.
        process = subprocess.Popen(
            [sys.executable, "-m", "egresswatch.cli", *command, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append((command, path, process))
    for command, path, process in started:
        try:
            _, err = process.communicate(timeout=60)
        finally:
            process.kill()  # a no-op once it has exited
        assert process.returncode == 2, (command, path, err)
        assert "Traceback" not in err
        assert err.startswith(f"{path}: "), err


def test_reading_many_targets_peaks_at_about_two_kb_a_target() -> None:
    """The parse's peak stays in the process's RSS (docs/performance.md, "Issue 14: 5,000
    targets under 150 MiB"): the composed nodes keep no end mark (2,466 bytes a target
    before, 2,066 now, with libyaml's events)."""
    text = "targets:\n" + "".join(
        f"  - {{name: t{i:05d}, address: '127.0.0.1:80'}}\n" for i in range(2000)
    )
    tracemalloc.start()
    try:
        data = parse_config_text(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data["targets"]) == 2000
    assert peak / 2000 < 2_250
