"""Detection through the running service: a fault becomes an incident in the API and in
/metrics, with its first failing step, suspect and start; the repair closes it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp

from egresswatch.wiring import Service
from tests.support.dnsserver import TestDNSServer, dns_server
from tests.support.https import HOST, NAME, LocalServers, Pki, Reply, local_servers, pki
from tests.support.service import poll
from tests.test_service import Lab, lab, running, samples, series

__all__ = ["dns_server", "lab", "local_servers", "pki", "running"]  # fixtures


async def get(service: Service, path: str) -> Any:
    assert service.listening is not None
    host, port = service.listening
    async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}{path}") as r:
        assert r.status == 200, await r.text()
        return await r.json(content_type=None)


async def test_a_dns_outage_opens_and_closes_one_incident(
    lab: Lab,
    dns_server: TestDNSServer,
    local_servers: LocalServers,
    pki: Pki,
    running: Callable[..., Any],
) -> None:
    shop = await local_servers.https(Reply(200))
    control = await local_servers.https(Reply(200))
    path = lab.write(
        [
            {"name": "shop", "url": f"https://{NAME}:{shop.port}/"},
            {"name": "control", "url": f"https://{HOST}:{control.port}/", "role": "control"},
        ],
        detection={"fail_after": 3, "recover_after": 2},
    )
    service: Service = await running(path, migrate=True, watch_config=False)
    await asyncio.sleep(2.5)  # healthy rounds first
    dns_server.nxdomain(NAME)

    async def opened() -> Any:
        page = await get(service, "/api/v1/incidents?target=shop&open=true")
        return page["items"]

    # fail_after 3 at a 1 s interval, plus a flush: well within 10 s.
    items = await poll(opened, timeout_s=10)
    assert len(items) == 1
    incident = items[0]
    assert incident["first_failing_step"] == "dns_cluster"
    assert incident["suspect"] == "name_not_found"  # NXDOMAIN, no upstream to say otherwise
    assert incident["sources"] == ["node-1"]
    assert incident["next_command"].startswith("nslookup ")
    # Its start is the first failed round, before it was detected.
    started = datetime.fromisoformat(incident["started_at"])
    detected = datetime.fromisoformat(incident["detected_at"])
    assert started < detected

    changes = await get(service, "/api/v1/changes?target=shop&step=dns_cluster")
    failing = [c for c in changes["items"] if c["current"] == "failing"]
    assert len(failing) == 1 and failing[0]["started_at"] == incident["started_at"]

    status = await get(service, "/api/v1/status")
    shop_status = next(t for t in status["targets"] if t["target"] == "shop")
    assert shop_status["healthy"] is False
    _, text = await _metrics(service)
    found = samples(text)
    suspect = incident["suspect"]
    assert found[series("egresswatch_incidents_open", target="shop", suspect=suspect)] == 1

    dns_server.answer(NAME, a=[HOST])

    async def closed() -> Any:
        page = await get(service, f"/api/v1/incidents/{incident['id']}")
        return page if page["ended_at"] else None

    ended = await poll(closed, timeout_s=10)
    assert ended["open"] is False
    assert datetime.fromisoformat(ended["ended_at"]) > started
    _, text = await _metrics(service)
    found = samples(text)
    assert found[series("egresswatch_incidents_open", target="shop", suspect=suspect)] == 0
    controls = await get(service, "/api/v1/incidents?target=control")
    assert controls["items"] == []


async def _metrics(service: Service) -> tuple[int, str]:
    assert service.listening is not None
    host, port = service.listening
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{host}:{port}/metrics") as r,
    ):
        return r.status, await r.text()


async def test_an_incident_open_at_a_restart_is_the_same_incident_after_it(
    lab: Lab,
    dns_server: TestDNSServer,
    local_servers: LocalServers,
    running: Callable[..., Any],
) -> None:
    """Detection is rebuilt from the database: the incident keeps its id and start across the
    restart, and closes once, when the source recovers."""
    shop = await local_servers.https(Reply(200))
    path = lab.write(
        [{"name": "shop", "url": f"https://{NAME}:{shop.port}/"}],
        detection={"fail_after": 2, "recover_after": 2},
    )
    first: Service = await running(path, migrate=True, watch_config=False)
    dns_server.nxdomain(NAME)
    incident = (await poll(opened_on(first), timeout_s=10))[0]
    await first.stop()

    second: Service = await running(path, watch_config=False)
    [still] = (await get(second, "/api/v1/incidents?open=true"))["items"]
    assert (still["id"], still["started_at"]) == (incident["id"], incident["started_at"])
    assert still["first_failing_step"] == "dns_cluster"
    held = second.pipeline.book.open_for("shop")
    assert held is not None and held.id == incident["id"]

    dns_server.answer(NAME, a=[HOST])

    async def closed() -> Any:
        found = await get(second, f"/api/v1/incidents/{incident['id']}")
        return found if found["open"] is False else None

    done = await poll(closed, timeout_s=15)
    assert done["started_at"] == incident["started_at"]
    notes = [entry["note"] for entry in done["history"]]
    assert notes[0] == "opened" and notes[-1] == "closed: all sources recovered"
    assert sum(note.startswith("closed") for note in notes) == 1
    everything = (await get(second, "/api/v1/incidents"))["items"]
    assert [i["id"] for i in everything] == [incident["id"]]  # none opened anew


def opened_on(service: Service) -> Callable[[], Any]:
    async def check() -> Any:
        return (await get(service, "/api/v1/incidents?open=true"))["items"]

    return check


async def test_a_pair_that_never_failed_is_ok_in_the_status_with_no_change_logged(
    lab: Lab, local_servers: LocalServers, running: Callable[..., Any]
) -> None:
    """The first good rounds are stored as step states (not as changes): the status says ok,
    not unknown, from the first round on."""
    control = await local_servers.https(Reply(200))
    path = lab.write([{"name": "control", "url": f"https://{HOST}:{control.port}/"}])
    service: Service = await running(path, migrate=True, watch_config=False)

    async def judged() -> Any:
        status = await get(service, "/api/v1/status")
        (target,) = status["targets"]
        sources = target["sources"]
        return sources and all(s["state"] == "ok" and s["steps"] for s in sources) and sources

    (source,) = await poll(judged, timeout_s=10)
    assert source["healthy"] is True
    assert {s["step"] for s in source["steps"]} >= {"tcp_connect", "tls_handshake"}
    assert all(s["state"] == "ok" for s in source["steps"])
    assert (await get(service, "/api/v1/changes?target=control"))["items"] == []
