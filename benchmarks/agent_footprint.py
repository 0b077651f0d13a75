"""An agent's footprint as a DaemonSet pod: 50 targets at 30 s (issue 14's budget: under 40 MiB
RSS and under 5 millicores on average) (not a test).

Starts the loopback targets of `egresswatch bench` (nginx HTTP and HTTPS, dnsmasq for a name), an
`egresswatch controller` process (SQLite) whose plan holds ``--targets`` targets (a mix of TCP,
HTTP by IP, HTTPS by IP and HTTP by name) at ``--interval``, and an `egresswatch agent` process
that follows it. After a warm-up it samples the agent's CPU (utime + stime) and RSS over
``--duration`` seconds and prints RSS (current and peak), millicores on average, and the
packages the agent process has imported (from its /proc/PID/maps). Everything on 127.0.0.1.

    python benchmarks/agent_footprint.py [--targets 50] [--kinds tcp,http,https,http_name]
                                         [--interval 30] [--duration 180]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from egresswatch.bench.kinds import KINDS
from egresswatch.bench.lab import Lab, loopback_targets
from egresswatch.bench.procs import (
    cpu_seconds,
    egresswatch_command,
    find_tools,
    free_port,
    process,
    rss_mib,
    wait_port,
)

TOKEN_ENV = "EGRESSWATCH_BENCH_AGENT_TOKEN"
TOKEN = "bench-agent-token-0123456789abcdef"  # a loopback benchmark's own, never a secret


def controller_config(
    lab: Lab, kinds: list[str], count: int, interval_s: int, port: int, directory: Path
) -> Path:
    lines = [
        "source: {name: controller-host, kind: node}",
        f"listen: 127.0.0.1:{port}",
        f"database: sqlite+aiosqlite:///{directory}/controller.db",
        f"agent_token_env: {TOKEN_ENV}",
        "proxy_from_environment: false",
        f"probes: {{interval: {interval_s}s, timeout: {min(interval_s, 10)}s, step_timeout: 2s,"
        " trace_every: 7d}",
        "targets:",
    ]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        key = "address" if kind == "tcp" else "url"
        lines.append(f"  - {{name: t{i:03d}, {key}: '{lab.target(kind)}'}}")
    config = directory / "controller.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def native_libraries(pid: int) -> list[str]:
    """The shared objects mapped into the process (what its imports pulled in), by package."""
    found: set[str] = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if "site-packages/" in path and path.endswith(".so"):
            found.add(path.split("site-packages/", 1)[1].split("/", 1)[0])
    return sorted(found)


def measure(
    kinds: list[str], count: int, interval_s: int, warmup_s: float, duration_s: float
) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="egresswatch-agent-") as name,
        loopback_targets(Path(name), find_tools(os.environ.get("PATH", ""))) as lab,
    ):
        directory = Path(name)
        port, agent_port = free_port(), free_port()
        config = controller_config(lab, kinds, count, interval_s, port, directory)
        token_file = directory / "token"
        token_file.write_text(TOKEN + "\n")
        os.environ[TOKEN_ENV] = TOKEN
        script = egresswatch_command()
        controller = [*script, "--log-level", "warning", "controller", "--migrate"]
        controller += ["--config", str(config)]
        agent = [*script, "--log-level", "warning", "agent"]
        agent += ["--controller", f"http://127.0.0.1:{port}", "--token-file", str(token_file)]
        agent += ["--source", "bench-node", "--source-kind", "node"]
        agent += ["--listen", f"127.0.0.1:{agent_port}", "--resolv-conf", str(lab.resolv_conf)]
        agent += ["--ca-file", str(lab.ca_file)]
        ctl_log, agent_log = directory / "controller.log", directory / "agent.log"
        with process(controller, ctl_log) as ctl:
            wait_port(port, ctl, "egresswatch controller", ctl_log, limit_s=60)
            with process(agent, agent_log) as proc:
                wait_port(agent_port, proc, "egresswatch agent", agent_log, limit_s=60)
                time.sleep(warmup_s)
                cpu, start = cpu_seconds(proc.pid), time.monotonic()
                time.sleep(duration_s)
                cpu, took = cpu_seconds(proc.pid) - cpu, time.monotonic() - start
                rss, peak = rss_mib(proc.pid), rss_mib(proc.pid, "VmHWM")
                libraries = native_libraries(proc.pid)
    print(f"{count} targets ({', '.join(kinds)}) at {interval_s} s,", end=" ")
    print(f"measured {took:.0f} s after {warmup_s:.0f} s")
    print(f"agent RSS {rss:.1f} MiB (peak {peak:.1f} MiB)")
    print(f"agent CPU {cpu * 1000 / took:.2f} millicores on average ({cpu:.2f} CPU-s)")
    print(f"native code mapped from: {', '.join(libraries)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"of {', '.join(KINDS)}")
    parser.add_argument("--interval", type=int, default=30, help="seconds between rounds")
    parser.add_argument("--warmup", type=float, default=35.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds measured")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds: a comma-separated list of {', '.join(KINDS)}")
    measure(kinds, args.targets, args.interval, args.warmup, args.duration)


if __name__ == "__main__":
    main()
