"""`egresswatch bench`'s own parts, fast: the medians and the table, the counters read from
/metrics, the config it writes, its flags' errors, the tools it needs, and the loopback CA.

The command end to end (nginx, dnsmasq, `egresswatch run` and blackbox_exporter as processes)
is tests/test_benchmark_smoke.py.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from egresswatch.bench.blackbox import Answers
from egresswatch.bench.flags import bench_options
from egresswatch.bench.kinds import KINDS, NAME
from egresswatch.bench.lab import Lab
from egresswatch.bench.ours import SCRAPED, SHED, counters, egresswatch_config, sample_of
from egresswatch.bench.procs import PACKAGES, BenchUsageError, find_tools
from egresswatch.bench.report import HEADER, Row, Run, Sample, Spread
from egresswatch.cli import _parser as build_parser
from egresswatch.cli import main
from egresswatch.localca import Leaf, LocalCa
from egresswatch.metrics import Metrics
from egresswatch.model import Reason, RoundResult, Status, Step, StepResult
from egresswatch.settings import Use, load_settings


def run(ours_ms: float, theirs_ms: float, *, shed: int = 0, failed: int = 0) -> Run:
    """A run whose CPU per round is the given milliseconds (1,000 rounds each side)."""
    return Run(
        Sample(1000, ours_ms, 100.0, failed=failed, shed=shed, lateness_ms=1.0),
        Sample(1000, theirs_ms, 20.0),
    )


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


# --- medians and the table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([2.0], Spread(2.0, 2.0, 2.0)),
        ([3.0, 1.0, 2.0], Spread(2.0, 1.0, 3.0)),
        ([4.0, 1.0, 2.0, 3.0], Spread(2.5, 1.0, 4.0)),
        ([1.0, 1.0, 9.0], Spread(1.0, 1.0, 9.0)),  # the median, not the mean
    ],
)
def test_spread_is_the_median_and_the_range(values: list[float], expected: Spread) -> None:
    assert Spread.of(values) == expected


def test_spread_shows_the_range_only_when_the_values_differ() -> None:
    assert Spread.of([0.671, 0.674]).text(2) == "0.67"
    assert Spread.of([0.5, 0.7, 0.9]).text(2) == "0.70 (0.50-0.90)"
    assert Spread.of([3, 0, 0]).text(0) == "0 (0-3)"
    with pytest.raises(ValueError, match="no values"):
        Spread.of([])


def test_a_row_shows_medians_and_the_median_of_the_runs_own_ratios() -> None:
    # Ratios per run: 1/1, 4/2, 3/6 = 1.0, 2.0, 0.5: their median is 1.0; the ratio of the
    # medians (3 / 2 = 1.5) would hide that each run's load moved both sides alike.
    row = Row("https", 200, (run(1.0, 1.0), run(4.0, 2.0, shed=7), run(3.0, 6.0, failed=2)))
    line = cells(row.line())
    header = cells(HEADER.splitlines()[0])
    assert len(line) == len(header)
    shown = dict(zip(header, line, strict=True))
    assert shown["round kind"] == "https" and shown["rate/s"] == "200" and shown["runs"] == "3"
    assert shown["egresswatch CPU-ms/round"] == "3.00 (1.00-4.00)"
    assert shown["blackbox CPU-ms/round"] == "2.00 (1.00-6.00)"
    assert shown["ratio"] == "1.00 (0.50-2.00)"
    assert shown["shed"] == "0 (0-7)"
    assert shown["failed steps"] == "0 (0-2)"
    assert shown["egresswatch RSS MiB"] == "100" and shown["blackbox failed"] == "0"


def test_a_rows_document_has_the_medians_and_every_run() -> None:
    row = Row("tcp", 20, (run(1.0, 2.0), run(3.0, 2.0)))
    document = json.loads(json.dumps(row.document()))
    assert document["kind"] == "tcp" and document["rate"] == 20
    assert document["ratio"] == {"median": 1.0, "min": 0.5, "max": 1.5}
    assert document["egresswatch_cpu_ms_per_round"]["median"] == 2.0
    assert [r["egresswatch"]["cpu_ms_per_round"] for r in document["runs"]] == [1.0, 3.0]
    assert document["runs"][0]["blackbox"]["rounds"] == 1000


# --- what a window counts -----------------------------------------------------------------

METRICS = """\
# HELP egresswatch_rounds_shed_total Rounds not run.
# TYPE egresswatch_rounds_shed_total counter
egresswatch_rounds_shed_total{why="late"} %(shed)s
egresswatch_scheduler_lateness_seconds_bucket{le="0.1"} %(started)s
egresswatch_scheduler_lateness_seconds_count %(started)s
egresswatch_scheduler_lateness_seconds_sum %(lateness)s
egresswatch_step_results_total{source="bench",target="t1",step="tcp_connect",status="ok",reason=""} %(ok)s
egresswatch_step_results_total{source="bench",target="t1",step="http_response",status="ok",reason=""} %(ok)s
egresswatch_step_results_total{source="bench",target="t2",step="tcp_connect",status="fail",reason="conn_refused"} %(failed)s
egresswatch_step_results_total{source="bench",target="t2",step="http_response",status="skipped",reason=""} %(failed)s
egresswatch_step_results_total{source="bench",target="t3",step="http_response",status="fail",reason="http_status"} 1.0
egresswatch_step_results_total{source="bench",target="t3",step="tcp_connect",status="error",reason="prober_overloaded"} 4.0
"""  # noqa: E501


def test_a_window_counts_rounds_run_shed_and_failed_steps() -> None:
    start = {"shed": 5, "started": 100, "lateness": 0.5, "ok": 9, "failed": 2}
    end = {"shed": 25, "started": 1104, "lateness": 2.508, "ok": 987, "failed": 4}
    before, after = counters(METRICS % start), counters(METRICS % end)
    sample = sample_of(before, after, cpu_s=0.98, rss=120.0)
    # Rounds are their tcp_connect results: 978 ok and 2 failed. The 1,004 jobs that got a slot
    # are those, the 20 rounds shed, and 4 runs of the controller's tick.
    assert sample.rounds == 980 and sample.shed == 20
    assert sample.failed == 2  # status="fail" only: prober_overloaded is an error
    assert sample.cpu_ms_per_round == pytest.approx(1.0)
    assert sample.lateness_ms == pytest.approx(2.0)  # 2.008 s over 1,004 slots


def test_the_filtered_scrape_counts_what_the_whole_page_does() -> None:
    """The bench scrapes /metrics with `name[]=` filters (SCRAPED): what they keep of the real
    registry must count the same rounds, failures, lateness and shedding as the whole page."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, version="0")
    for status, reason in ((Status.OK, None), (Status.FAIL, Reason.CONN_REFUSED)):
        step = StepResult(Step.TCP_CONNECT, status, reason, duration_s=0.01)
        metrics.observe_round(RoundResult("t1", "bench", datetime.now(UTC), (step,)))
    metrics.observe_lateness(0.25)
    metrics.count_round_shed()
    whole = counters(generate_latest(registry).decode())
    restricted = registry.restricted_registry(name for _, name in SCRAPED)
    filtered = counters(generate_latest(restricted).decode())
    assert filtered == whole
    assert (whole["rounds"], whole["failed"], whole[SHED]) == (2.0, 1.0, 1.0)


def test_blackbox_answers_are_counted_in_the_window() -> None:
    answers = Answers([(0.5, True, True), (1.0, True, True), (1.5, True, False)])
    answers.ends += [(2.0, False, False), (3.0, True, True)]
    assert answers.between(1.0, 3.0) == (2, 2)  # answered: 1.0 and 1.5; failed: 1.5 and 2.0
    assert answers.between(0.0, 10.0) == (4, 2)


# --- the config it writes -----------------------------------------------------------------


def lab(tmp_path: Path) -> Lab:
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.53\n")
    (tmp_path / "ca.pem").write_bytes(LocalCa("test").cert_pem)
    return Lab(tmp_path, 8080, 8443, "127.0.0.53", tmp_path / "ca.pem", tmp_path / "resolv.conf")


@pytest.mark.parametrize("kind", KINDS)
def test_the_config_it_writes_is_valid_and_holds_max_concurrent(tmp_path: Path, kind: str) -> None:
    the_lab = lab(tmp_path)
    config = egresswatch_config(the_lab, kind, 3, tmp_path, 9999, max_concurrent=7)
    settings = load_settings(config, use=Use.SERVICE)
    assert settings.max_concurrent_rounds == 7
    assert settings.listen == "127.0.0.1:9999"
    assert len(settings.targets) == 6  # 3 rounds/s at a 2 s interval
    first = settings.targets[0]
    assert (first.address if kind == "tcp" else first.url) == the_lab.target(kind)


# --- its flags ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kinds", "tcp,udp"], "--kinds: unknown udp (known: tcp, http, https, http_name)"),
        (["--kinds", ","], "--kinds: none given"),
        (["--rates", "200,fast"], "--rates: 'fast' is not a whole number"),
        (["--rates", "0"], "--rates: '0' is not a whole number"),
        (["--rates", "5001"], "from 1 to 5000"),
        (["--warmup", "-1"], "--warmup: -1 is not from 0 to 600"),
        (["--window", "0"], "--window: 0 is not from 0.1 to 600"),
        (["--repeat", "0"], "--repeat: 0 is not from 1 to 20"),
        (["--max-concurrent", "0"], "--max-concurrent: max_concurrent_rounds"),
        (["--max-concurrent", "10001"], "less than or equal to 10000"),
    ],
)
def test_a_bad_flag_is_named(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *flags]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""  # nothing measured, nothing printed


def test_a_flag_argparse_refuses_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--repeat", "three"])
    assert exited.value.code == 2
    assert "--repeat: invalid int value: 'three'" in capsys.readouterr().err


def test_profile_without_py_spy_on_path_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["bench", "--profile", str(tmp_path / "graphs")]) == 2
    assert "--profile: py-spy is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "graphs").exists()


def test_a_user_other_than_root_is_told_before_anything_starts() -> None:
    args = build_parser().parse_args(["bench", "--kinds", "tcp"])
    with pytest.raises(BenchUsageError, match="needs root: blackbox_exporter runs in a mount"):
        bench_options(args, euid=1000)


def test_missing_tools_are_named_with_their_debian_packages(tmp_path: Path) -> None:
    with pytest.raises(BenchUsageError) as refused:
        find_tools(str(tmp_path), system_dirs=())
    for binary, package in PACKAGES.items():
        assert f"{binary} (Debian package {package})" in str(refused.value)
    assert "apt-get install dnsmasq-base mount nginx-light" in str(refused.value)


def test_tools_are_found_on_the_path_first(tmp_path: Path) -> None:
    for binary in PACKAGES:
        tool = tmp_path / binary
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    tools = find_tools(str(tmp_path), system_dirs=())
    assert tools.nginx == str(tmp_path / "nginx")
    assert tools.blackbox_exporter == str(tmp_path / "prometheus-blackbox-exporter")


# --- the loopback CA ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["127.0.0.1", NAME])
def test_a_leaf_from_the_local_ca_verifies_for_its_ip_and_its_name(
    tmp_path: Path, name: str
) -> None:
    ca = LocalCa("test CA")
    client = handshake(ca, ca.issue("127.0.0.1", NAME), name, tmp_path)
    assert client.version() is not None
    peer = client.getpeercert()
    assert peer is not None and peer["subject"] == ((("commonName", "127.0.0.1"),),)


def test_a_leaf_from_the_local_ca_does_not_verify_for_another_name(tmp_path: Path) -> None:
    ca = LocalCa("test CA")
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        handshake(ca, ca.issue("127.0.0.1", NAME), "other.test", tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(LocalCa("another CA"), ca.issue(NAME), NAME, tmp_path)


def handshake(ca: LocalCa, leaf: Leaf, name: str, directory: Path) -> ssl.SSLObject:
    """A real TLS handshake through memory, the client trusting `ca` only and checking `name`;
    the client's side once done (ssl.SSLCertVerificationError when the leaf does not verify)."""
    (directory / "leaf.pem").write_bytes(leaf.cert_pem)
    (directory / "leaf.key").write_bytes(leaf.key_pem)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")
    client_context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    to_server, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, from_client, server_hostname=name)
    server = server_context.wrap_bio(to_server, from_server, server_side=True)
    for _ in range(10):  # a TLS 1.3 handshake is two flights each way; bounded anyway
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        to_server.write(from_client.read())
        to_client.write(from_server.read())
    return client


def test_the_local_ca_refuses_a_leaf_for_no_name() -> None:
    with pytest.raises(ValueError, match="at least one name"):
        LocalCa("test CA").issue()
