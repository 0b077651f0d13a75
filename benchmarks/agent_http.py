"""What one request to the controller costs the agent's process: its client (h11 on asyncio
streams, agent/http_client.py) against the aiohttp client it replaced (not a test).

A loopback aiohttp server in a process of its own answers `POST /api/v1/results` as the
controller does (a small JSON document) and `GET /api/v1/plan` with a plan-sized body; this
process sends ``--requests`` of each, one at a time on one keep-alive connection, with each
client, and prints this process's CPU (user + system) per request. Bodies: a batch of
``--batch-kib`` KiB (200 rounds are about 450 KiB), a plan of ``--plan-kib`` KiB.

    python benchmarks/agent_http.py [--requests 2000] [--batch-kib 64] [--plan-kib 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from egresswatch.agent.http_client import ControllerClient
from egresswatch.bench.procs import free_port, wait_port

SERVER = """
import sys
from aiohttp import web
plan = b'{"targets": "' + b'x' * (int(sys.argv[2]) * 1024) + b'"}'
async def results(request):
    await request.read()
    return web.json_response({"stored": 200, "duplicate": False})
async def get_plan(request):
    return web.Response(body=plan, content_type="application/json")
app = web.Application()
app.router.add_post("/api/v1/results", results)
app.router.add_get("/api/v1/plan", get_plan)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""
LIMIT = 16 * 1024 * 1024


async def with_h11(url: str, count: int, batch: bytes) -> tuple[float, float]:
    client = ControllerClient(url, user_agent="bench")
    try:

        async def post() -> None:
            answer = await client.request(
                "POST", "/api/v1/results", body=batch, timeout_s=10, max_body=65536
            )
            assert answer.status == 200

        async def get() -> None:
            answer = await client.request(
                "GET", "/api/v1/plan", query={"source": "n"}, timeout_s=10, max_body=LIMIT
            )
            assert answer.status == 200

        return await timed(post, count), await timed(get, count)
    finally:
        await client.close()


async def with_aiohttp(url: str, count: int, batch: bytes) -> tuple[float, float]:
    async with aiohttp.ClientSession() as session:

        async def post() -> None:
            async with session.post(f"{url}/api/v1/results", data=batch) as response:
                await response.read()
                assert response.status == 200

        async def get() -> None:
            params = {"source": "n"}
            async with session.get(f"{url}/api/v1/plan", params=params) as response:
                await response.read()
                assert response.status == 200

        return await timed(post, count), await timed(get, count)


async def timed(send: object, count: int) -> float:
    """CPU-µs of this process per call of `send`, after 20 warm-up calls."""
    assert callable(send)
    for _ in range(20):
        await send()
    started = time.process_time()
    for _ in range(count):
        await send()
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch-kib", type=int, default=64)
    parser.add_argument("--plan-kib", type=int, default=32)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), str(args.plan_kib)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port, server, "the loopback server", Path(os.devnull))
        url, batch = f"http://127.0.0.1:{port}", b"x" * (args.batch_kib * 1024)
        sizes = f"batch {args.batch_kib} KiB, plan {args.plan_kib} KiB"
        print(f"{args.requests} requests of each, {sizes}")
        print(f"{'client':24} {'POST batch':>16} {'GET plan':>16}  (CPU-µs per request)")
        for name, run in (("h11 (agent/http_client)", with_h11), ("aiohttp", with_aiohttp)):
            post, get = asyncio.run(run(url, args.requests, batch))
            print(f"{name:24} {post:16.0f} {get:16.0f}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
