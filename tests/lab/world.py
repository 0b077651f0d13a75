"""The lab's servers, run inside a namespace by the long-lived worker of `Lab.call`.

One worker interpreter per namespace holds an event loop in a thread; the functions below are
what `Lab.call(node, "tests.lab.world:NAME", {...})` runs there, each returning at once while
the servers keep serving. State lives in this module because the worker is the process: one
world per namespace, gone when the worker is killed.

    site(name, address, port, cert_file)      an HTTPS site answering 200 to every request
    reply(name, status, flap=False)           its answer from now on (flap: per client,
                                              every other request gets `status`, the rest 200)
    close_site(name) / open_site(name)        stop listening (connects are refused) / again
    reset_site(name)                          accept and reset at once instead (open_site: again)
    relay(name, address, port, to, delay_ms)  a TCP relay that delays every chunk in user space
    delay(name, delay_ms)                     the relay's added round-trip time from now on
    dns(address, answers, ttl, rcode)         a DNS server on address:53 (dnslib)
    dns_rule(address, name, rule)             answer / nxdomain / servfail / silence a name
    kube_api(port, objects)                   the fake Kubernetes API server on 127.0.0.1:port
    kube_apply(obj) / kube_remove(kind, name, namespace)   change what it serves
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections import Counter
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from tests.support.dnsserver import Rule, TestDNSServer
from tests.support.https import Reply
from tests.support.kubeapi import HOST, FakeKubeApi
from tests.support.tcpservers import TcpServer

CALL_TIMEOUT_S = 10.0
_HEAD_LIMIT = 64 * 1024
_READ_S = 5.0
_CHUNK = 64 * 1024
# The lab's round trips are microseconds: a reset this much after the accept reaches the
# client after its connect completed, as a real endpoint's (a round trip away) does; still
# well within the probe's 150 ms grace read.
_RESET_AFTER_S = 0.02
T = TypeVar("T")


@dataclass
class Site:
    """An HTTPS server on one address, answering every request with `status`."""

    name: str
    address: str
    port: int
    context: ssl.SSLContext
    status: int = 200
    flap: bool = False
    requests: Counter[str] = field(default_factory=Counter)  # per client address
    server: asyncio.Server | None = None

    def status_for(self, client: str) -> int:
        self.requests[client] += 1
        if self.flap and self.requests[client] % 2 == 1:
            return 200
        return self.status

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_READ_S):
                await reader.readuntil(b"\r\n\r\n")
            client = str(writer.get_extra_info("peername")[0])
            writer.write(Reply(self.status_for(client)).encode())
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass
class Relay:
    """A TCP relay that holds every chunk for half the added round-trip time, each way."""

    name: str
    address: str
    port: int
    to: tuple[str, int]
    delay_ms: float
    server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.to)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(_CHUNK):
                await asyncio.sleep(self.delay_ms / 2000)
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    sites: dict[str, Site] = field(default_factory=dict)
    relays: dict[str, Relay] = field(default_factory=dict)
    resetting: dict[str, TcpServer] = field(default_factory=dict)  # a site's stand-in
    resolvers: dict[str, TestDNSServer] = field(default_factory=dict)
    kube: FakeKubeApi | None = None


_world: World | None = None


def _the_world() -> World:
    global _world
    if _world is None:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="lab-world", daemon=True).start()
        _world = World(loop)
    return _world


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, _the_world().loop).result(CALL_TIMEOUT_S)


# --- HTTPS sites ---------------------------------------------------------------------------


def site(name: str, address: str, port: int, cert_file: str) -> None:
    """Start an HTTPS site with the key and chain in `cert_file` (PEM)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file)
    served = Site(name, address, port, context)
    _the_world().sites[name] = served
    open_site(name)


def reply(name: str, status: int, flap: bool = False) -> None:
    served = _the_world().sites[name]
    served.status, served.flap = status, flap
    served.requests.clear()


def open_site(name: str) -> None:
    world = _the_world()
    served = world.sites[name]
    stand_in = world.resetting.pop(name, None)
    if stand_in is not None:
        stand_in.close()
    if served.server is None:
        served.server = _run(_listen(served.serve, served.address, served.port, served.context))


def close_site(name: str) -> None:
    """Stop listening: a connect now gets a reset from the endpoint's kernel (port closed)."""
    served = _the_world().sites[name]
    if served.server is not None:
        _run(_close(served.server))
        served.server = None


def reset_site(name: str) -> None:
    """The site's address and port accept every connection and reset it (SO_LINGER 0) without
    reading a byte, whatever the client sends: a load balancer with no healthy backend.
    `open_site` puts the site back."""
    world = _the_world()
    served = world.sites[name]
    close_site(name)
    if name not in world.resetting:
        world.resetting[name] = TcpServer(
            "reset", served.address, served.port, reset_after_s=_RESET_AFTER_S
        )


async def _listen(
    handler: Any, address: str, port: int, context: ssl.SSLContext | None = None
) -> asyncio.Server:
    return await asyncio.start_server(handler, address, port, ssl=context, reuse_address=True)


async def _close(server: asyncio.Server) -> None:
    server.close()  # open connections finish; new connects are refused
    await server.wait_closed()


# --- the slow path -------------------------------------------------------------------------


def relay(name: str, address: str, port: int, to: Sequence[Any], delay_ms: float) -> None:
    """Start a relay on address:port to `to` ([address, port]) adding `delay_ms` per round trip."""
    served = Relay(name, address, port, (str(to[0]), int(to[1])), delay_ms)
    served.server = _run(_listen(served.serve, address, port))
    _the_world().relays[name] = served


def delay(name: str, delay_ms: float) -> None:
    _the_world().relays[name].delay_ms = delay_ms


# --- DNS -----------------------------------------------------------------------------------


def dns(
    address: str, answers: Mapping[str, Sequence[str]], ttl: int = 30, rcode: str = "NXDOMAIN"
) -> None:
    """A DNS server on address:53 (UDP and TCP) answering `answers` (name -> IPv4s) and
    `rcode` for every other name."""
    server = TestDNSServer(address, 53, ttl=ttl)
    server.set_default(Rule(rcode=rcode))
    for name, ips in answers.items():
        server.answer(name, a=ips)
    _the_world().resolvers[address] = server


def dns_rule(address: str, name: str, rule: str, a: Sequence[str] = ()) -> None:
    """How the server on `address` treats `name`: answer (with `a`), nxdomain, servfail,
    silence."""
    server = _the_world().resolvers[address]
    match rule:
        case "answer":
            server.answer(name, a=a)
        case "nxdomain":
            server.nxdomain(name)
        case "servfail":
            server.rcode(name, "SERVFAIL")
        case "silence":
            server.silence(name)
        case _:
            raise ValueError(f"rule: {rule!r} is not answer, nxdomain, servfail or silence")


# --- the Kubernetes API server -------------------------------------------------------------


def kube_api(port: int, objects: Sequence[Mapping[str, Any]]) -> None:
    """The fake API server (tests/support/kubeapi.py) serving `objects` on 127.0.0.1:`port`
    inside this namespace, where the controller runs."""
    api = FakeKubeApi([dict(obj) for obj in objects], bookmark_every_s=1.0)
    _run(_serve(api, port))
    _the_world().kube = api


async def _serve(api: FakeKubeApi, port: int) -> None:
    runner = web.AppRunner(api.app(), shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()


def kube_apply(obj: Mapping[str, Any]) -> None:
    """Create or replace `obj`; the watches see it (on the world's loop, where they run)."""
    api = _the_world().kube
    assert api is not None, "kube_api first"
    _run(_call(lambda: api.apply(dict(obj))))


def kube_remove(kind: str, name: str, namespace: str | None = None) -> None:
    api = _the_world().kube
    assert api is not None, "kube_api first"
    _run(_call(lambda: api.remove(kind, name, namespace)))


async def _call(action: Any) -> None:
    action()
