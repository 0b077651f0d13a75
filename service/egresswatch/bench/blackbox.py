"""One measured blackbox_exporter process, driven at a fixed rate by an aiohttp client.

The exporter (Debian's prometheus-blackbox-exporter) gets the module equivalent to each round
kind and is called `rate` times a second on ``/probe``. It runs in a mount namespace of its
own where /etc/resolv.conf is the lab's (bind-mounted), so names go to the lab's dnsmasq and
never to the machine's resolver. What it did in the window is what the driver saw answered.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from egresswatch.bench.lab import Lab
from egresswatch.bench.procs import Tools, cpu_seconds, free_port, process, rss_mib, wait_port
from egresswatch.bench.report import Sample

CALL_LIMIT_S = 5  # one /probe call at most; the module's own timeout is 2 s
CONNECTIONS = 256


def blackbox_config(lab: Lab) -> Path:
    """The modules, one per round kind (named as the kinds), in the lab's directory."""
    config = lab.directory / "blackbox.yml"
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
    """Each /probe call's end (loop time), whether it was answered, and whether it succeeded."""

    ends: list[tuple[float, bool, bool]] = field(default_factory=list)

    def between(self, start: float, end: float) -> tuple[int, int]:
        """Among calls ended in [start, end): (answered, failed), where failed counts probes
        that did not succeed and calls that got no answer."""
        inside = [(answered, ok) for when, answered, ok in self.ends if start <= when < end]
        return sum(a for a, _ in inside), sum(not ok for _, ok in inside)


async def drive(port: int, target: str, module: str, rate: int, stop_at: float) -> Answers:
    """Call /probe `rate` times a second until loop time `stop_at`; every call bounded."""
    url = f"http://127.0.0.1:{port}/probe"
    params = {"target": target, "module": module}
    answers = Answers()
    loop = asyncio.get_running_loop()

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(url, params=params) as answer:
                ok = "probe_success 1" in await answer.text()
        except (aiohttp.ClientError, TimeoutError):
            answers.ends.append((loop.time(), False, False))
        else:
            answers.ends.append((loop.time(), True, ok))

    pending: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=CALL_LIMIT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        due = loop.time()
        while due < stop_at:
            await asyncio.sleep(max(0.0, due - loop.time()))
            task = asyncio.create_task(one(session), name="egresswatch-bench-probe")
            pending.add(task)
            task.add_done_callback(pending.discard)
            due += 1 / rate
        if pending:
            await asyncio.wait(pending, timeout=CALL_LIMIT_S + 1)
    return answers


async def measure_blackbox(
    lab: Lab, tools: Tools, kind: str, rate: int, *, warmup_s: float, window_s: float
) -> Sample:
    """Start blackbox_exporter, drive it at `rate` for the warm-up and one window, measure the
    window, stop it by its PID."""
    port = free_port()
    config = blackbox_config(lab)
    script = (
        f"mount --bind {lab.resolv_conf} /etc/resolv.conf && exec {tools.blackbox_exporter}"
        f" --config.file={config} --web.listen-address=127.0.0.1:{port} --log.level=warn"
    )
    argv = [tools.unshare, "--mount", "--propagation", "private", "sh", "-c", script]
    log = lab.directory / "blackbox.log"
    with process(argv, log) as proc:
        await asyncio.to_thread(wait_port, port, proc, "blackbox_exporter", log)
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + warmup_s + window_s
        driver = asyncio.create_task(
            drive(port, lab.target(kind), kind, rate, stop_at), name="egresswatch-bench-driver"
        )
        await asyncio.sleep(warmup_s)
        cpu, opened = cpu_seconds(proc.pid), loop.time()
        await asyncio.sleep(window_s)
        cpu, closed = cpu_seconds(proc.pid) - cpu, loop.time()
        rss = rss_mib(proc.pid)
        answers = await driver
    rounds, failed = answers.between(opened, closed)
    return Sample(rounds, cpu, rss, failed)
