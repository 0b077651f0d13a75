"""http_server.serve: the controller's API binds through it (an agent's listener is
agent/listener.py; both are held to the same limits in tests/test_http_limits.py)."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from aiohttp import web

from egresswatch.http_server import ListenError, serve


def _app() -> web.Application:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


async def test_port_0_reports_the_port_the_kernel_chose() -> None:
    runner, (host, port) = await serve(_app(), "127.0.0.1:0")
    try:
        assert (host, port != 0) == ("127.0.0.1", True)
        async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/") as r:
            assert await r.text() == "hello"
    finally:
        await runner.cleanup()


async def test_a_taken_address_is_named_and_nothing_is_left_open() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        app, cleaned = _app(), []

        async def on_cleanup(_: web.Application) -> None:
            cleaned.append(True)

        app.on_cleanup.append(on_cleanup)
        with pytest.raises(ListenError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "):
            await serve(app, f"127.0.0.1:{port}")
    assert cleaned == [True]  # the runner was cleaned up: the caller has nothing to close
