"""egresswatch's full path against blackbox_exporter, side by side, at the same rate (not a test).

Starts loopback targets from Debian packages: nginx (one HTTP port, one HTTPS port with a
certificate from a CA made on the spot) and dnsmasq (answers ``bench.test`` with 127.0.0.1).
For each round kind (TCP by address, HTTP by IP, HTTPS by IP, HTTP by name) and rate it runs

- ``egresswatch run`` as a process: targets enough for the rate at a 2 s interval, SQLite in a
  temporary directory, DNS through a resolv.conf of its own naming the loopback dnsmasq: the
  whole path (schedule, probe, classify, metrics, store, judge);
- blackbox_exporter as a process, with the equivalent module, driven at the same rate by an
  aiohttp client calling ``/probe?target=...&module=...`` (the exporter runs in a mount
  namespace of its own where /etc/resolv.conf is the benchmark's, so names go to dnsmasq);

and prints each process's CPU milliseconds per round (utime + stime from /proc/PID/stat over a
window after a warm-up, divided by the rounds done in that window: egresswatch's started rounds,
blackbox_exporter's answered probes), the ratio, RSS and egresswatch's scheduler lateness (mean;
seconds mean the process was saturated and did fewer rounds than the rate). Nothing leaves
127.0.0.1; every process started is stopped by its PID.

    python benchmarks/side_by_side.py [--kinds tcp,http,https,http_name] [--rates 200,500]
                                      [--warmup 6] [--window 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import trustme

INTERVAL_S = 2  # egresswatch targets = rate x this; its shortest allowed interval is 1 s
NAME = "bench.test"
KINDS = ("tcp", "http", "https", "http_name")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Lab:
    """The loopback targets and the files both probers need."""

    directory: Path
    http_port: int
    https_port: int
    dns_address: str  # a loopback address of the benchmark's own, port 53 (Go reads no port)
    ca_file: Path
    resolv_conf: Path

    def target(self, kind: str) -> str:
        """What one round probes, as a target of egresswatch and of blackbox_exporter."""
        return {
            "tcp": f"127.0.0.1:{self.http_port}",
            "http": f"http://127.0.0.1:{self.http_port}/",
            "https": f"https://127.0.0.1:{self.https_port}/",
            "http_name": f"http://{NAME}:{self.http_port}/",
        }[kind]


@dataclass(frozen=True)
class Sample:
    """One process's cost over the measured window."""

    rounds: int
    cpu_ms_per_round: float
    rss_mib: float
    lateness: str = ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process for the duration of the block, stopped by its PID (TERM, then KILL)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    proc.log_path = log  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def log_of(proc: subprocess.Popen[bytes]) -> str:
    """The end of a process's log (`process` keeps the path on the Popen)."""
    path = getattr(proc, "log_path", None)
    return path.read_text()[-2000:] if isinstance(path, Path) else "(no log)"


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, limit_s: float = 15) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}; its log: {log_of(proc)}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port} within {limit_s} s")


def _need(binary: str) -> str:
    found = shutil.which(binary) or next(
        (p for d in ("/usr/sbin", "/usr/bin") if os.access(p := f"{d}/{binary}", os.X_OK)), None
    )
    if found is None:
        raise SystemExit(f"{binary} is not installed (Debian: see .ci/run's package list)")
    return found


@contextmanager
def targets(directory: Path) -> Iterator[Lab]:
    """nginx (HTTP and HTTPS) and dnsmasq on 127.0.0.1 high ports, with temporary configs."""
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert("127.0.0.1", NAME)
    leaf.cert_chain_pems[0].write_to_path(str(directory / "leaf.pem"))
    leaf.private_key_pem.write_to_path(str(directory / "leaf.key"))
    http_port, https_port = free_port(), free_port()
    pid = os.getpid()
    dns_address = f"127.83.{(pid >> 8) % 256}.{pid % 254 + 1}"
    conf = directory / "nginx.conf"
    conf.write_text(
        f"daemon off; master_process off; worker_processes 1; pid {directory}/nginx.pid;\n"
        f"error_log {directory}/nginx.err;\nevents {{ worker_connections 4096; }}\n"
        f"http {{ access_log off; client_body_temp_path {directory}; proxy_temp_path {directory};"
        f" fastcgi_temp_path {directory}; uwsgi_temp_path {directory}; scgi_temp_path {directory};"
        f"\n server {{ listen 127.0.0.1:{http_port}; location / {{ return 200 'ok\\n'; }} }}\n"
        f" server {{ listen 127.0.0.1:{https_port} ssl; ssl_certificate {directory}/leaf.pem;"
        f" ssl_certificate_key {directory}/leaf.key; location / {{ return 200 'ok\\n'; }} }}\n}}\n"
    )
    resolv = directory / "resolv.conf"
    resolv.write_text(f"nameserver {dns_address}\noptions ndots:1 timeout:1 attempts:1\n")
    nginx = [_need("nginx"), "-p", str(directory), "-c", str(conf), "-e", "stderr"]
    dnsmasq = [
        _need("dnsmasq"),
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=53",
        f"--listen-address={dns_address}",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        f"--address=/{NAME}/127.0.0.1",
    ]
    with (
        process(nginx, directory / "nginx.log") as web,
        process(dnsmasq, directory / "dnsmasq.log") as dns,
    ):
        wait_port(http_port, web, "nginx")
        wait_port(https_port, web, "nginx")
        time.sleep(0.3)
        if dns.poll() is not None:
            raise SystemExit(f"dnsmasq exited: {(directory / 'dnsmasq.log').read_text()}")
        yield Lab(directory, http_port, https_port, dns_address, ca_file, resolv)


# --- egresswatch ------------------------------------------------------------------------------


def console_script() -> str:
    """The `egresswatch` next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("egresswatch")
    return str(beside) if beside.exists() else _need("egresswatch")


def egresswatch_config(lab: Lab, kind: str, rate: int, directory: Path, port: int) -> Path:
    count = rate * INTERVAL_S
    key = "address" if kind == "tcp" else "url"
    lines = [
        "source: {name: bench, kind: node}",
        f"listen: 127.0.0.1:{port}",
        f"database: sqlite+aiosqlite:///{directory}/egresswatch.db",
        f"dns: {{resolv_conf: {lab.resolv_conf}, upstream: '{lab.dns_address}'}}",
        "proxy_from_environment: false",
        f"probes: {{interval: {INTERVAL_S}s, timeout: {INTERVAL_S}s, step_timeout: 1s,"
        f" trace_every: 7d, ca_file: {lab.ca_file}}}",
        "targets:",
    ]
    lines += [f"  - {{name: t{i:05d}, {key}: '{lab.target(kind)}'}}" for i in range(count)]
    config = directory / "egresswatch.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _metric_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums


_LATENESS = (
    "egresswatch_scheduler_lateness_seconds_count",
    "egresswatch_scheduler_lateness_seconds_sum",
)
_OK_ROUNDS = "egresswatch_step_results_total"


async def _scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
        text = await answer.text()
    sums = _metric_sums(text, _LATENESS)
    sums["failed"] = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(_OK_ROUNDS) and 'status="fail"' in line
    )
    return sums


async def measure_egresswatch(
    lab: Lab, kind: str, rate: int, warmup_s: float, window_s: float
) -> Sample:
    directory = Path(tempfile.mkdtemp(dir=lab.directory))
    port = free_port()
    config = egresswatch_config(lab, kind, rate, directory, port)
    argv = [
        console_script(),
        "--log-level",
        "warning",
        "run",
        "--migrate",
        "--config",
        str(config),
    ]
    with process(argv, directory / "egresswatch.log") as proc:
        wait_port(port, proc, "egresswatch run", limit_s=60)
        await asyncio.sleep(warmup_s)
        async with aiohttp.ClientSession() as session:
            before = await _scrape(session, port)
            cpu = cpu_seconds(proc.pid)
            await asyncio.sleep(window_s)
            cpu = cpu_seconds(proc.pid) - cpu
            rss = rss_mib(proc.pid)
            after = await _scrape(session, port)
    rounds = int(after[_LATENESS[0]] - before[_LATENESS[0]])
    late_ms = (after[_LATENESS[1]] - before[_LATENESS[1]]) / max(rounds, 1) * 1000
    failed = int(after["failed"] - before["failed"])
    lateness = f"{late_ms:.1f} ms mean, {failed} failed steps"
    return Sample(rounds, cpu * 1000 / max(rounds, 1), rss, lateness)


# --- blackbox_exporter ------------------------------------------------------------------------


def blackbox_config(lab: Lab, directory: Path) -> Path:
    config = directory / "blackbox.yml"
    config.write_text(
        "modules:\n"
        "  tcp: {prober: tcp, timeout: 2s, tcp: {preferred_ip_protocol: ip4}}\n"
        "  http: {prober: http, timeout: 2s, http: {preferred_ip_protocol: ip4}}\n"
        "  http_name: {prober: http, timeout: 2s, http: {preferred_ip_protocol: ip4}}\n"
        "  https: {prober: http, timeout: 2s, http: {preferred_ip_protocol: ip4,"
        f" tls_config: {{ca_file: {lab.ca_file}}}}}}}\n"
    )
    return config


@dataclass
class Answers:
    """What the driver got back: when each probe answered (loop time), and how many failed."""

    at: list[float]
    failed: int = 0

    def between(self, start: float, end: float) -> int:
        return sum(1 for when in self.at if start <= when < end)


async def _drive(port: int, lab: Lab, kind: str, rate: int, stop_at: float) -> Answers:
    """Call /probe `rate` times a second until `stop_at` (bounded: each call 5 s at most)."""
    url = f"http://127.0.0.1:{port}/probe"
    params = {"target": lab.target(kind), "module": kind}
    answers = Answers([])
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=5)

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(url, params=params) as answer:
                text = await answer.text()
        except (aiohttp.ClientError, TimeoutError):
            answers.failed += 1
            return
        answers.at.append(loop.time())
        if "probe_success 1" not in text:
            answers.failed += 1

    pending: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        due = loop.time()
        while due < stop_at:
            await asyncio.sleep(max(0.0, due - loop.time()))
            task = asyncio.create_task(one(session), name="blackbox-probe")
            pending.add(task)
            task.add_done_callback(pending.discard)
            due += 1 / rate
        if pending:
            await asyncio.wait(pending, timeout=6)
    return answers


async def measure_blackbox(
    lab: Lab, kind: str, rate: int, warmup_s: float, window_s: float
) -> Sample:
    port = free_port()
    config = blackbox_config(lab, lab.directory)
    # A mount namespace of its own: its /etc/resolv.conf is ours (dnsmasq), never the machine's.
    exporter = _need("prometheus-blackbox-exporter")
    script = (
        f"mount --bind {lab.resolv_conf} /etc/resolv.conf && exec {exporter}"
        f" --config.file={config} --web.listen-address=127.0.0.1:{port} --log.level=warn"
    )
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    with process(argv, lab.directory / "blackbox.log") as proc:
        wait_port(port, proc, "blackbox_exporter")
        loop = asyncio.get_running_loop()
        start = loop.time()
        driver = asyncio.create_task(
            _drive(port, lab, kind, rate, start + warmup_s + window_s), name="blackbox-driver"
        )
        await asyncio.sleep(warmup_s)
        cpu, opened = cpu_seconds(proc.pid), loop.time()
        await asyncio.sleep(window_s)
        cpu, closed = cpu_seconds(proc.pid) - cpu, loop.time()
        rss = rss_mib(proc.pid)
        answers = await driver
    rounds = answers.between(opened, closed)
    lateness = f"{answers.failed} failed of {len(answers.at)}, {rounds} in window"
    return Sample(rounds, cpu * 1000 / max(rounds, 1), rss, lateness)


# --- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    kind: str
    rate: int
    ours: Sample
    theirs: Sample

    def line(self) -> str:
        ratio = self.ours.cpu_ms_per_round / max(self.theirs.cpu_ms_per_round, 1e-9)
        return (
            f"| {self.kind} | {self.rate} | {self.ours.cpu_ms_per_round:.2f}"
            f" | {self.theirs.cpu_ms_per_round:.2f} | {ratio:.2f}"
            f" | {self.ours.rss_mib:.0f} MiB | {self.theirs.rss_mib:.0f} MiB"
            f" | {self.ours.rounds} in window, {self.ours.lateness}"
            f" | {self.theirs.lateness} |"
        )


HEADER = (
    "| round kind | rate/s | egresswatch CPU-ms/round | blackbox CPU-ms | ratio"
    " | egresswatch RSS | blackbox RSS | egresswatch rounds, lateness | blackbox probes |\n"
    "|---|---:|---:|---:|---:|---:|---:|---|---|"
)


async def compare(
    kinds: list[str], rates: list[int], warmup_s: float, window_s: float
) -> list[Row]:
    """Every (kind, rate), egresswatch then blackbox_exporter, one at a time."""
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="egresswatch-bench-") as name,
        targets(Path(name)) as lab,
    ):
        for kind in kinds:
            for rate in rates:
                ours = await measure_egresswatch(lab, kind, rate, warmup_s, window_s)
                theirs = await measure_blackbox(lab, kind, rate, warmup_s, window_s)
                rows.append(Row(kind, rate, ours, theirs))
                print(rows[-1].line(), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"of {', '.join(KINDS)}")
    parser.add_argument("--rates", default="200,500", help="rounds per second, comma-separated")
    parser.add_argument("--warmup", type=float, default=6.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(unknown)} (known: {', '.join(KINDS)})")
    rates = [int(r) for r in args.rates.split(",") if r]
    print(HEADER, flush=True)
    asyncio.run(compare(kinds, rates, args.warmup, args.window))


if __name__ == "__main__":
    main()
