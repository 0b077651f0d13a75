"""One /metrics scrape at many (source, target) pairs (not a test).

Feeds one healthy round (five steps timed, the trace skipped) of every pair into a Metrics
registry, half the sources pods and half nodes, then renders the scrape once and prints its
size, the CPU it took and the process's peak RSS, for `metrics.detail: source` and
`source_kind`. Each detail level runs in a process of its own, so the peaks are its own.

    python benchmarks/scrape.py [--sources 100] [--targets 100]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest

from egresswatch.metrics import Metrics
from egresswatch.model import Reason, RoundResult, SourceKind, Status, Step, StepResult

TIMED = (Step.DNS_CLUSTER, Step.DNS_UPSTREAM, Step.TCP_CONNECT, Step.TLS_HANDSHAKE)


def _one(detail: str, sources: int, targets: int) -> str:
    registry = CollectorRegistry()
    metrics = Metrics(registry, version="bench", per_source_kind=detail == "source_kind")
    steps = tuple(StepResult(s, Status.OK, duration_s=0.01) for s in (*TIMED, Step.HTTP_RESPONSE))
    steps += (StepResult(Step.PATH_TRACE, Status.SKIPPED, Reason.NOT_DUE),)
    now = datetime.now(UTC)
    for s in range(sources):
        kind = SourceKind.NODE if s % 2 else SourceKind.POD
        source = f"aks-nodepool1-12345678-vmss{s:06d}"  # an AKS node name's length
        for t in range(targets):
            metrics.observe_round(RoundResult(f"target-{t:03d}.example", source, now, steps), kind)
    cpu = time.process_time()
    text = generate_latest(registry)
    cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = text.count(b"\n")
    return f"{detail:<12} {len(text) / 1e6:8.1f} {cpu:8.2f} {lines:10d} {peak:10.0f}"


def main(sources: int, targets: int) -> None:
    print(f"{sources} sources x {targets} targets = {sources * targets} pairs")
    print(f"{'detail':<12} {'MB':>8} {'CPU-s':>8} {'lines':>10} {'peak MiB':>10}")
    for detail in ("source", "source_kind"):
        args = ["--one", detail, "--sources", str(sources), "--targets", str(targets)]
        done = subprocess.run(
            [sys.executable, __file__, *args], capture_output=True, text=True, check=True
        )
        print(done.stdout.strip())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--one", choices=("source", "source_kind"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        print(_one(options.one, options.sources, options.targets))
    else:
        main(options.sources, options.targets)
