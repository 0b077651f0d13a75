"""A saturated `egresswatch run` reports no outage (issue 14).

A real process, `egresswatch run` with many healthy loopback TCP targets on a short interval,
and in the same process a CPU hog thread that holds the GIL in bursts (tests/support/
overloaded.py): its event loop runs late by tens of milliseconds at every syscall, so it can
run about half the rounds it is asked for. Before issue 14 its step timeouts became
`conn_timeout` failures and incidents opened against endpoints that were fine. Now late
rounds are shed and counted, a timeout during the loop's stalls is `error`/`prober_overloaded`,
and the endpoints stay healthy. Bounded: the process lives 60 s at most.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.service import free_port
from tests.support.tcpservers import TcpServer

ROOT = Path(__file__).resolve().parent.parent
RUN_S = 10.0  # how long the saturated process runs before it is read
LIFETIME_S = 60.0  # the process stops itself after this, whatever happens to the test


@dataclass(frozen=True)
class Outcome:
    """What a saturated run reported: counters summed over every series, and incidents."""

    results: dict[tuple[str, str], float]  # (status, reason) -> step results
    shed: float
    lag_s: float
    incidents: list[dict[str, object]]
    rounds: float  # rounds whose tcp_connect ran (ok, fail or error)

    @property
    def failed(self) -> float:
        return sum(n for (status, _), n in self.results.items() if status == "fail")

    def count(self, status: str, reason: str) -> float:
        return self.results.get((status, reason), 0.0)

    def minus(self, before: Outcome) -> Outcome:
        """What happened since `before` (the incidents are all of them)."""
        results = {k: n - before.results.get(k, 0.0) for k, n in self.results.items()}
        return Outcome(
            results,
            self.shed - before.shed,
            self.lag_s,
            self.incidents,
            self.rounds - before.rounds,
        )


@pytest.fixture
def servers() -> Iterator[list[TcpServer]]:
    made = [TcpServer("accept") for _ in range(4)]
    try:
        yield made
    finally:
        for server in made:
            server.close()


def _config(tmp_path: Path, ports: list[int], targets: int, listen: int) -> Path:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1#1\n")
    lines = [
        "source: {name: node-a, kind: node}",
        f"listen: 127.0.0.1:{listen}",
        f"database: sqlite+aiosqlite:///{tmp_path}/ew.db",
        f"dns: {{resolv_conf: {resolv}}}",
        "proxy_from_environment: false",
        "probes: {interval: 1s, timeout: 1s, step_timeout: 500ms, trace_every: 1d,"
        " trace_max_hops: 2, trace_hop_timeout: 100ms}",
        "detection: {fail_after: 2, recover_after: 2}",
        "targets:",
        *(
            f"  - {{name: t{i}, address: '127.0.0.1:{ports[i % len(ports)]}'}}"
            for i in range(targets)
        ),
    ]
    path = tmp_path / "egresswatch.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=25) as answer:  # loopback only
        body: bytes = answer.read()
        return body


def _read(base: str) -> Outcome:
    results: dict[tuple[str, str], float] = {}
    shed = lag = rounds = 0.0
    for family in text_string_to_metric_families(_get(f"{base}/metrics").decode()):
        for sample in family.samples:
            if sample.name == "egresswatch_step_results_total":
                key = (sample.labels["status"], sample.labels["reason"])
                results[key] = results.get(key, 0.0) + sample.value
                if sample.labels["step"] == "tcp_connect" and key[0] != "skipped":
                    rounds += sample.value
            elif sample.name == "egresswatch_rounds_shed_total":
                shed += sample.value
            elif sample.name == "egresswatch_event_loop_lag_seconds":
                lag = sample.value
    incidents = json.loads(_get(f"{base}/api/v1/incidents"))["items"]
    return Outcome(results, shed, lag, incidents, rounds)


def run_saturated(
    tmp_path: Path, ports: list[int], *, targets: int, burst_s: float, run_s: float = RUN_S
) -> Outcome:
    """Run `egresswatch run` with `targets` targets at 1 s and a GIL hog of `burst_s` for
    `run_s`, and read what it reported (its /metrics and /api/v1/incidents)."""
    listen = free_port()
    config = _config(tmp_path, ports, targets, listen)
    command = [sys.executable, "-m", "tests.support.overloaded", "--burst", str(burst_s)]
    command += ["--lifetime", str(LIFETIME_S), "--", "run", "--config", str(config), "--migrate"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "stderr.log"
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=log.open("wb"))
    base = f"http://127.0.0.1:{listen}"
    try:
        deadline = time.monotonic() + 15
        while True:  # bounded: 15 s to come up
            try:
                _get(f"{base}/healthz")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("egresswatch run did not come up") from None
                time.sleep(0.2)
        before = _read(base)  # the process is up: what it did before the overload
        process.send_signal(signal.SIGUSR1)  # the hog starts
        time.sleep(run_s)
        process.send_signal(signal.SIGUSR2)  # the hog ends: read at full speed
        time.sleep(1.5)  # rounds in flight end (1 s timeout) and are counted
        return _read(base).minus(before)
    except BaseException:
        print(log.read_text()[-3000:])  # the process's own account, for the failure report
        raise
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_a_saturated_process_sheds_rounds_and_reports_no_failure(
    tmp_path: Path, servers: list[TcpServer]
) -> None:
    ports = [server.port for server in servers]
    outcome = run_saturated(tmp_path, ports, targets=300, burst_s=0.01)
    print(
        f"rounds {outcome.rounds:.0f}, shed {outcome.shed:.0f}, loop lag {outcome.lag_s:.3f} s,"
        f" results {sorted(outcome.results.items())}"
    )
    assert outcome.shed > 0, outcome  # saturated: it gave rounds up, and said so
    assert outcome.rounds > 0, outcome  # and still ran some
    assert outcome.failed == 0, outcome.results
    assert outcome.incidents == []
