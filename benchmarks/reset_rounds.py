"""What a failing HTTPS round costs when a reset right after the accept is told apart (not a test).

Two servers on 127.0.0.1: one that accepts and resets a moment later without reading (a load
balancer with no healthy backend: the round's TLS handshake meets the reset, and so does the
second connection that sends nothing), and one that resets once it has read the ClientHello (an
SNI filter: the second connection stays up for the whole 150 ms grace read). Runs ``--rounds``
whole checklists against each, one after the other; prints process CPU milliseconds and wall
milliseconds per round, and the round's first failing step. A good round's cost is
`tls_rounds.py`'s.

    python benchmarks/reset_rounds.py [--rounds 100]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from egresswatch.model import Endpoint
from egresswatch.probes.checklist import ChecklistPlan, TraceMode, run_checklist
from egresswatch.probes.tls import TlsContexts, TlsOptions

_RST_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0}: closing sends RST
_RESET_AFTER_S = 0.005  # after the client's connect completed, as from a far endpoint
_READ_S = 2.0

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _reset(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
    writer.transport.abort()


async def _unprompted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(_RESET_AFTER_S)
    _reset(writer)


async def _after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(_READ_S):
            await reader.read(4096)
    except (TimeoutError, OSError):
        pass
    except asyncio.CancelledError:
        # Python 3.11's start_server logs a cancelled handler as an error; at the end the
        # loop cancels the idle connections' handlers: end quietly.
        writer.transport.abort()
        return
    _reset(writer)


async def _measure(handler: Handler, rounds: int) -> tuple[float, float, str | None]:
    """(CPU ms per round, wall ms per round, the last round's first failing step)."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    plan = ChecklistPlan(
        target="bench",
        endpoint=Endpoint.parse(f"https://127.0.0.1:{port}/"),
        resolv_conf=Path("/nonexistent"),  # an IP literal: DNS is not asked
        step_timeout_s=2.0,
        tls=TlsOptions(verify=False, contexts=TlsContexts()),
        trace=TraceMode.NEVER,
    )
    try:
        await run_checklist(plan, source="warm-up")
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            result = await run_checklist(plan, source="bench")
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        server.close()
        await server.wait_closed()
    first = result.first_failing_step.value if result.first_failing_step else None
    return cpu / rounds * 1000, wall / rounds * 1000, first


async def main(rounds: int) -> None:
    print(f"{rounds} failing HTTPS rounds each, one at a time")
    for label, handler in (
        ("resets unprompted", _unprompted),
        ("resets after ClientHello", _after_hello),
    ):
        cpu_ms, wall_ms, first = await _measure(handler, rounds)
        print(f"{label:<25} {cpu_ms:6.2f} CPU-ms/round {wall_ms:7.1f} ms/round  first: {first}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    asyncio.run(main(parser.parse_args().rounds))
