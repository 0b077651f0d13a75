"""HTTPS round cost with and without the TLS context cache (not a test).

Starts an HTTPS server on 127.0.0.1 with a certificate from a CA made on the spot, and runs
``--rounds`` whole checklists of an `https://127.0.0.1:PORT/` target one after the other, twice:
once building TLS contexts per step (what every round did before `TlsContexts`), once with one
cache shared by the rounds (what a runner does now). The CA file is the system bundle with the
test CA appended, so a context costs what it costs with the system trust store (the default,
no `ca_file`). Prints process CPU milliseconds per round and wall rounds per second.

    python benchmarks/tls_rounds.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import trustme

from egresswatch.agent.config_file import checklist_for
from egresswatch.probes.checklist import ChecklistPlan, TraceMode, run_checklist
from egresswatch.probes.tls import TlsContexts
from egresswatch.settings import settings_from_dict


async def _serve(context: ssl.SSLContext) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


def _bundle(directory: Path, ca: trustme.CA) -> tuple[Path, int]:
    """The system bundle with the test CA appended, and its size in KiB."""
    bundle = directory / "bundle.pem"
    system = ssl.get_default_verify_paths().cafile
    bundle.write_bytes((Path(system).read_bytes() if system else b"") + ca.cert_pem.bytes())
    return bundle, bundle.stat().st_size // 1024


async def _measure(plan: ChecklistPlan, rounds: int) -> tuple[float, float]:
    """(CPU ms per round, rounds per second of wall time)."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        result = await run_checklist(plan, source="bench")
        if result.first_failing_step is not None:
            raise SystemExit(f"a round failed: {result}")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / rounds * 1000, rounds / wall


async def main(rounds: int) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server, port = await _serve(server_context)
    with tempfile.TemporaryDirectory() as directory:
        bundle, size_kib = _bundle(Path(directory), ca)
        settings = settings_from_dict(
            {
                "probes": {"ca_file": str(bundle)},
                "targets": [{"name": "bench", "url": f"https://127.0.0.1:{port}/"}],
            }
        )
        target = settings.targets[0]
        plan = checklist_for(settings, target, trace=TraceMode.NEVER, environ={})
        cached = replace(plan, tls=replace(plan.tls, contexts=TlsContexts()))
        await run_checklist(cached, source="warm-up")
        before = await _measure(plan, rounds)
        after = await _measure(cached, rounds)
    server.close()
    await server.wait_closed()
    print(f"{rounds} HTTPS rounds each way, CA bundle of {size_kib} KiB (system store + test CA)")
    for label, (cpu_ms, rate) in (("context per step", before), ("cached contexts", after)):
        print(f"{label:<18} {cpu_ms:7.2f} CPU-ms/round {rate:8.1f} rounds/s (one at a time)")
    print(f"ratio              {before[0] / after[0]:7.1f}x less CPU per round")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    asyncio.run(main(parser.parse_args().rounds))
