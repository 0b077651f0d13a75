"""An agent's footprint as a DaemonSet pod: 50 targets at 30 s (issue 14's budget: under 40 MiB
RSS and under 5 millicores on average) (not a test).

Starts the loopback targets of `egresswatch bench` (nginx HTTP and HTTPS, dnsmasq for a name), an
`egresswatch controller` process (SQLite) whose plan holds ``--targets`` targets (a mix of TCP,
HTTP by IP, HTTPS by IP and HTTP by name) at ``--interval``, and an `egresswatch agent` process
that follows it. After a warm-up it samples the agent's CPU (utime + stime) and RSS over
``--duration`` seconds and prints RSS (current and peak), millicores on average, and the
packages the agent process has imported (from its /proc/PID/maps), its threads, and how its RSS
splits into anonymous memory (the heap: objects, arenas) and file-backed pages (the
interpreter's and the extensions' shared libraries). The agent's /metrics is read every
``--scrape-every`` seconds (30, as the chart's PodMonitor does). Everything on 127.0.0.1.

``--agent-env NAME=VALUE`` (repeatable) sets a variable for the agent process only, e.g.
``MALLOC_ARENA_MAX=2`` or ``PYTHONMALLOC=malloc``; ``--buffer-mib`` and ``--fill`` check what
the in-memory buffer costs: with ``--fill`` the controller is stopped after the warm-up, so
every round of the measured window stays in the agent's buffer. ``--profile FILE`` writes
py-spy's collapsed stacks of the measured window (``pip install py-spy``).

    python benchmarks/agent_footprint.py [--targets 50] [--kinds tcp,http,https,http_name]
                                         [--interval 30] [--duration 180] [--scrape-every 30]
                                         [--agent-env NAME=VALUE ...] [--buffer-mib N] [--fill]
                                         [--profile FILE]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from egresswatch.bench.kinds import KINDS
from egresswatch.bench.lab import Lab, loopback_targets
from egresswatch.bench.procs import (
    egresswatch_command,
    find_tools,
    free_port,
    process,
    rss_mib,
    wait_port,
)
from egresswatch.bench.profile import find_py_spy, record_argv

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
        # The product's defaults at 30 s (timeout 10 s, step_timeout 5 s), scaled below 10 s.
        f"probes: {{interval: {interval_s}s, timeout: {min(interval_s, 10)}s,"
        f" step_timeout: {min(interval_s, 10) / 2:g}s, trace_every: 7d}}",
        "targets:",
    ]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        key = "address" if kind == "tcp" else "url"
        lines.append(f"  - {{name: t{i:03d}, {key}: '{lab.target(kind)}'}}")
    config = directory / "controller.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def native_libraries(pid: int) -> list[str]:
    """The shared objects mapped into the process (what its imports pulled in), by package."""
    found: set[str] = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if "site-packages/" in path and path.endswith(".so"):
            found.add(path.split("site-packages/", 1)[1].split("/", 1)[0])
    return sorted(found)


@dataclass(frozen=True)
class Run:
    """What one measurement runs: the plan's mix and the agent's own settings."""

    kinds: list[str]
    count: int
    interval_s: int
    warmup_s: float
    duration_s: float
    agent_env: dict[str, str]
    buffer_mib: int | None
    fill: bool
    profile: Path | None  # py-spy's collapsed stacks of the measured window, when given
    scrape_every_s: float  # as Prometheus would (the chart's monitoring.interval); 0: never


def agent_argv(run: Run, lab: Lab, port: int, agent_port: int, token_file: Path) -> list[str]:
    """`egresswatch agent` for the plan's controller, behind `env` when variables are set
    (env execs the agent: the PID measured is the agent's)."""
    argv = [f"{k}={v}" for k, v in run.agent_env.items()]
    argv = ["/usr/bin/env", *argv] if argv else []
    argv += [*egresswatch_command(), "--log-level", "warning", "agent"]
    argv += ["--controller", f"http://127.0.0.1:{port}", "--token-file", str(token_file)]
    argv += ["--source", "bench-node", "--source-kind", "node"]
    argv += ["--listen", f"127.0.0.1:{agent_port}", "--resolv-conf", str(lab.resolv_conf)]
    argv += ["--ca-file", str(lab.ca_file)]
    if run.buffer_mib is not None:
        argv += ["--buffer-mib", str(run.buffer_mib)]
    return argv


def memory(pid: int) -> str:
    rss, peak = rss_mib(pid), rss_mib(pid, "VmHWM")
    anon, files = rss_mib(pid, "RssAnon"), rss_mib(pid, "RssFile")
    return f"RSS {rss:.1f} MiB (peak {peak:.1f}; anonymous {anon:.1f}, file-backed {files:.1f})"


def measure(run: Run) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="egresswatch-agent-") as name,
        loopback_targets(Path(name), find_tools(os.environ.get("PATH", ""))) as lab,
    ):
        directory = Path(name)
        port, agent_port = free_port(), free_port()
        config = controller_config(lab, run.kinds, run.count, run.interval_s, port, directory)
        token_file = directory / "token"
        token_file.write_text(TOKEN + "\n")
        os.environ[TOKEN_ENV] = TOKEN
        controller = [*egresswatch_command(), "--log-level", "warning", "controller", "--migrate"]
        controller += ["--config", str(config)]
        agent = agent_argv(run, lab, port, agent_port, token_file)
        ctl_log, agent_log = directory / "controller.log", directory / "agent.log"
        with process(controller, ctl_log) as ctl:
            wait_port(port, ctl, "egresswatch controller", ctl_log, limit_s=60)
            with process(agent, agent_log) as proc:
                wait_port(agent_port, proc, "egresswatch agent", agent_log, limit_s=60)
                scraping(agent_port, run.warmup_s, run.scrape_every_s)
                print(f"after the warm-up: agent {memory(proc.pid)}")
                if run.fill:  # every round of the window stays in the agent's buffer
                    ctl.send_signal(signal.SIGTERM)
                    ctl.wait(timeout=30)
                rounds = agent_metrics(agent_port).get(ROUNDS, 0.0)
                load = load_average()
                cpu, start = cpu_split(proc.pid), time.monotonic()
                with profiled(proc.pid, run.profile, run.duration_s, directory):
                    scraping(agent_port, run.duration_s, run.scrape_every_s)
                cpu, took = cpu_split(proc.pid) - cpu, time.monotonic() - start
                load = f"{load} -> {load_average()}"
                at_end = memory(proc.pid)
                libraries = native_libraries(proc.pid)
                tasks = threads(proc.pid)
                metrics = agent_metrics(agent_port)
                rounds = metrics.get(ROUNDS, 0.0) - rounds
        logs = {log.name: log.read_text()[-2000:] for log in directory.glob("*.log")}
    if not any(metrics.values()):
        for name, text in logs.items():  # the agent delivered nothing: say why
            print(f"--- the end of {name}\n{text}")
    print(f"{run.count} targets ({', '.join(run.kinds)}) at {run.interval_s} s,", end=" ")
    print(f"measured {took:.0f} s after {run.warmup_s:.0f} s", end="")
    print(f", /metrics read every {run.scrape_every_s:g} s" if run.scrape_every_s else "", end="")
    print(" (controller stopped: the buffer fills)" if run.fill else "")
    print(f"load average (1 min) at the window's start and end: {load}")
    if run.agent_env:
        print(f"agent environment: {' '.join(f'{k}={v}' for k, v in run.agent_env.items())}")
    print(f"agent {at_end}, {tasks} threads")
    print(f"agent counters: {', '.join(f'{k} {v:g}' for k, v in metrics.items())}")
    print(f"agent CPU {cpu.total * 1000 / took:.2f} millicores on average", end=" ")
    print(f"({cpu.total:.2f} CPU-s: user {cpu.user:.2f}, system {cpu.system:.2f})")
    if rounds:  # delivered in the window: a round's share of everything, fixed costs included
        each = cpu.total * 1000 / rounds
        print(f"{rounds:.0f} rounds delivered in the window: {each:.2f} CPU-ms each")
    print(f"native code mapped from: {', '.join(libraries)}")


def scraping(port: int, seconds: float, every_s: float) -> None:
    """Wait `seconds`, reading the agent's /metrics every `every_s` meanwhile (0: never)."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(left, every_s) if every_s > 0 else left)
        if every_s > 0 and time.monotonic() < until:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                answer.read()


@dataclass(frozen=True)
class Cpu:
    """A process's CPU seconds so far, user and system apart (/proc/PID/stat)."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)


def load_average() -> str:
    """The machine's 1-minute load average now (/proc/loadavg), as uptime prints it."""
    return Path("/proc/loadavg").read_text().split()[0]


def cpu_split(pid: int) -> Cpu:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return Cpu(int(fields[11]) / tick, int(fields[12]) / tick)


ROUNDS = "egresswatch_ingested_rounds_total"  # rounds the controller stored, as the agent counts
# The agent's own series that say how much work it did in the run (its /metrics).
COUNTERS = (
    ROUNDS,
    "egresswatch_ingest_batches_total",
    "egresswatch_agent_buffer_bytes",
    "egresswatch_buffer_depth",
)


def agent_metrics(port: int) -> dict[str, float]:
    """The COUNTERS from the agent's /metrics, summed over their labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in COUNTERS:
            found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


@contextmanager
def profiled(pid: int, out: Path | None, seconds: float, directory: Path) -> Iterator[None]:
    """py-spy sampling `pid` (non-blocking: the agent is never stopped) while the block runs,
    its collapsed stacks written to `out`; nothing when `out` is None."""
    if out is None:
        yield
        return
    # The venv's own bin first: `pip install py-spy` (a dev tool) puts it there.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    spy = record_argv(find_py_spy(search), pid, seconds, out, fmt="raw")
    with process(spy, directory / "py-spy.log") as sampler:
        yield
        sampler.wait(timeout=30)


def variables(pairs: list[str]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--agent-env: {pair!r} is not NAME=VALUE")
        found[name] = value
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"of {', '.join(KINDS)}")
    parser.add_argument("--interval", type=int, default=30, help="seconds between rounds")
    parser.add_argument("--warmup", type=float, default=35.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds measured")
    parser.add_argument("--agent-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--buffer-mib", type=int, help="the agent's --buffer-mib")
    parser.add_argument("--fill", action="store_true", help="stop the controller after warm-up")
    parser.add_argument("--profile", type=Path, help="py-spy's collapsed stacks to this file")
    parser.add_argument(
        "--scrape-every", type=float, default=30.0, help="seconds between /metrics reads; 0: none"
    )
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds: a comma-separated list of {', '.join(KINDS)}")
    try:
        env = variables(args.agent_env)
    except ValueError as exc:
        parser.error(str(exc))
    measure(
        Run(
            kinds,
            args.targets,
            args.interval,
            args.warmup,
            args.duration,
            env,
            args.buffer_mib,
            args.fill,
            args.profile,
            args.scrape_every,
        )
    )


if __name__ == "__main__":
    main()
