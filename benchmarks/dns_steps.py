"""CPU of a by-name round's two DNS steps against dnsmasq on loopback (not a test).

Starts the bench's loopback targets (`egresswatch.bench.lab`: dnsmasq answering `bench.test` on
a loopback address of its own, port 53; needs root and Debian's dnsmasq-base and nginx-light)
and runs `--pairs` times the two DNS steps of a by-name round, `dns_cluster` through the lab's
resolv.conf and `dns_upstream` to the same server, each asking A and AAAA: four queries a pair,
`--concurrency` pairs in flight, as the scheduler keeps rounds in flight. Prints process CPU
(this process only; dnsmasq's is not counted) in microseconds per pair and per query, and the
load average. Run it under the bench lock:

    flock /tmp/egresswatch-bench.lock python benchmarks/dns_steps.py [--pairs 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from egresswatch.addresses import Nameserver
from egresswatch.bench.kinds import NAME
from egresswatch.bench.lab import loopback_targets
from egresswatch.bench.procs import find_tools, load_average
from egresswatch.model import Status
from egresswatch.probes.dns import dns_cluster, dns_upstream
from egresswatch.probes.resolvconf import load_resolv_conf


async def _pairs(resolv: Path, server: Nameserver, count: int, concurrency: int) -> float:
    """Run `count` pairs, `concurrency` at a time; CPU seconds of this process."""
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            cluster = await dns_cluster(NAME, load_resolv_conf(resolv), timeout_s=5.0)
            upstream = await dns_upstream(NAME, server, timeout_s=5.0)
            if cluster.status is not Status.OK or upstream.status is not Status.OK:
                raise SystemExit(f"a DNS step failed: {cluster} {upstream}")

    started = time.process_time()
    async with asyncio.TaskGroup() as group:
        for index in range(concurrency):
            group.create_task(worker(), name=f"dns-bench-{index}")
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20000, help="pairs of DNS steps per run")
    parser.add_argument("--concurrency", type=int, default=32, help="pairs in flight")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is printed")
    args = parser.parse_args()
    print(f"load average at start: {load_average()}")
    tools = find_tools(os.environ.get("PATH", ""))
    with tempfile.TemporaryDirectory() as tmp, loopback_targets(Path(tmp), tools) as lab:
        server = Nameserver(lab.dns_address)
        asyncio.run(_pairs(lab.resolv_conf, server, 500, args.concurrency))  # warm-up
        runs = []
        for _ in range(args.repeat):
            cpu = asyncio.run(_pairs(lab.resolv_conf, server, args.pairs, args.concurrency))
            runs.append(cpu / args.pairs * 1e6)
            print(f"run: {runs[-1]:.1f} CPU-µs per pair of steps")
    per_pair = statistics.median(runs)
    print(
        f"median of {len(runs)}: {per_pair:.1f} CPU-µs per pair (4 queries), "
        f"{per_pair / 4:.1f} per query; load average at end: {load_average()}"
    )


if __name__ == "__main__":
    main()
