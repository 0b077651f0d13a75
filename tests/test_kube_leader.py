"""The leader elector (kube/leader.py) against the fake API server, through the real client.

Each test drives `try_acquire_or_renew` (or `run`) with a monotonic clock the test moves, so
"the holder's Lease has not expired yet" is a fact of the test, not of the machine's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from egresswatch.kube.api_calls import CALLS, LEASES
from egresswatch.kube.client import close_client, open_client
from egresswatch.kube.leader import LeaderElector, LeaseTiming, lease_identity, lease_namespace
from egresswatch.settings import LeaderElectionSettings, Settings
from egresswatch.wiring import Service
from tests.support.kubeapi import FakeKubeApi, RunningKubeApi, kube_api, start_kube_api
from tests.support.service import free_port, wait_for

__all__ = ["kube_api"]

NAMESPACE = "egresswatch"
LEASE = "egresswatch-controller"


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _nothing() -> None:
    return None


Factory = Callable[..., Awaitable[LeaderElector]]


@pytest.fixture
async def elector(kube_api: RunningKubeApi) -> AsyncIterator[Factory]:
    """Makes electors on their own clients against the fake API server; closes them."""
    made: list[LeaderElector] = []

    async def make(identity: str, clock: Clock, **kwargs: Any) -> LeaderElector:
        api = await open_client(kube_api.kubeconfig)
        one = LeaderElector(
            api,
            name=LEASE,
            namespace=NAMESPACE,
            identity=identity,
            timing=kwargs.pop("timing", LeaseTiming()),
            on_started=kwargs.pop("on_started", _nothing),
            on_stopped=kwargs.pop("on_stopped", _nothing),
            clock=lambda: datetime.now(UTC),
            monotonic=clock,
        )
        made.append(one)
        return one

    yield make
    for one in made:
        await close_client(one.api)


def _lease(kube_api: RunningKubeApi) -> dict[str, Any]:
    found = kube_api.api.get("Lease", LEASE, NAMESPACE)
    assert found is not None
    return found


async def test_a_free_lease_is_created_and_held(kube_api: RunningKubeApi, elector: Factory) -> None:
    """No Lease yet: we create it ourselves (no `pretty`: the 37.x LeaseLock fault)."""
    me = await elector("controller-a", Clock())
    assert await me.try_acquire_or_renew()
    spec = _lease(kube_api)["spec"]
    assert spec["holderIdentity"] == "controller-a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] and spec["renewTime"]


async def test_the_holder_renews(kube_api: RunningKubeApi, elector: Factory) -> None:
    me = await elector("controller-a", Clock())
    assert await me.try_acquire_or_renew()
    first = _lease(kube_api)
    await asyncio.sleep(0.01)  # renewTime has microseconds: the renewal is a later one
    assert await me.try_acquire_or_renew()
    renewed = _lease(kube_api)
    assert int(renewed["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert renewed["spec"]["renewTime"] > first["spec"]["renewTime"]
    assert renewed["spec"]["acquireTime"] == first["spec"]["acquireTime"]
    assert renewed["spec"]["leaseTransitions"] == 0


async def test_another_holder_is_waited_for_then_taken_over(
    kube_api: RunningKubeApi, elector: Factory
) -> None:
    """Held by another and renewed: wait. Not renewed for the lease duration (our own clock):
    taken over, leaseTransitions + 1."""
    clock_a, clock_b = Clock(), Clock()
    a = await elector("controller-a", clock_a)
    b = await elector("controller-b", clock_b)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    assert b.holder == "controller-a"
    clock_b.now += 14.0
    assert await a.try_acquire_or_renew()  # a renews: b's view of the record restarts
    assert not await b.try_acquire_or_renew()
    clock_b.now += 14.0
    assert not await b.try_acquire_or_renew()  # 14 s since the renewal b saw: not expired
    clock_b.now += 1.5
    assert await b.try_acquire_or_renew()  # 15.5 s: a is silent, b takes over
    spec = _lease(kube_api)["spec"]
    assert spec["holderIdentity"] == "controller-b"
    assert spec["leaseTransitions"] == 1
    assert not await a.try_acquire_or_renew()  # a sees b renewing now
    assert a.holder == "controller-b"


async def test_a_concurrent_update_is_a_409_and_the_next_try_reads_again(
    kube_api: RunningKubeApi, elector: Factory
) -> None:
    """Another writer between our read and our write: the write carries the old
    resourceVersion, the API server answers 409, the try fails; the next one reads again."""
    me = await elector("controller-a", Clock())
    assert await me.try_acquire_or_renew()
    leases = me._leases
    read = leases.read_namespaced_lease
    raced = False

    async def read_then_someone_writes(name: str, namespace: str) -> Any:
        nonlocal raced
        lease = await read(name, namespace)
        if not raced:  # e.g. an operator's `kubectl annotate lease`
            raced = True
            changed = _lease(kube_api)
            changed["metadata"].setdefault("annotations", {})["touched"] = "yes"
            kube_api.api.apply(changed)
        return lease

    leases.read_namespaced_lease = read_then_someone_writes  # type: ignore[method-assign,assignment]
    before = len([r for r in kube_api.api.requests if r[0] == "PUT"])
    assert not await me.try_acquire_or_renew()
    assert await me.try_acquire_or_renew()
    puts = [r for r in kube_api.api.requests if r[0] == "PUT"]
    assert len(puts) - before == 2
    assert _lease(kube_api)["metadata"]["annotations"] == {"touched": "yes"}


async def test_the_lead_is_lost_when_renewals_fail_past_the_deadline(tmp_path: Path) -> None:
    """The API server goes away: renewals fail, and past the renew deadline (well before the
    others may take the Lease) `on_stopped` stops the leader's work."""
    fake = FakeKubeApi()
    runner, running = await start_kube_api(fake, tmp_path)
    started, stopped = asyncio.Event(), asyncio.Event()

    async def on_started() -> None:
        started.set()

    async def on_stopped() -> None:
        stopped.set()

    api = await open_client(running.kubeconfig)
    me = LeaderElector(
        api,
        name=LEASE,
        namespace=NAMESPACE,
        identity="controller-a",
        timing=LeaseTiming(duration_s=3.0, renew_deadline_s=1.0, retry_period_s=0.1),
        on_started=on_started,
        on_stopped=on_stopped,
        clock=lambda: datetime.now(UTC),
    )
    task = asyncio.create_task(me.run(), name="test-elector")
    try:
        async with asyncio.timeout(10):
            await started.wait()
        assert me.leading
        await runner.cleanup()  # the API server is gone: connection refused from now on
        async with asyncio.timeout(10):
            await stopped.wait()
        assert not me.leading
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await close_client(api)
        await runner.cleanup()


async def test_another_holder_taking_the_lease_ends_the_lead_at_once(
    kube_api: RunningKubeApi, elector: Factory
) -> None:
    """Someone else holds the Lease at our renewal (our renewals were late): we stop at the
    first renewal that sees it, not at the deadline."""
    stopped = asyncio.Event()

    async def on_stopped() -> None:
        stopped.set()

    timing = LeaseTiming(duration_s=30.0, renew_deadline_s=20.0, retry_period_s=0.1)
    me = await elector("controller-a", Clock(), timing=timing, on_stopped=on_stopped)
    task = asyncio.create_task(me.run(), name="test-elector")
    try:
        async with asyncio.timeout(10):
            while not me.leading:
                await asyncio.sleep(0.05)
        taken = _lease(kube_api)
        taken["spec"]["holderIdentity"] = "controller-b"
        kube_api.api.apply(taken)
        async with asyncio.timeout(5):
            await stopped.wait()
        assert not me.leading
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_release_hands_the_lease_over(kube_api: RunningKubeApi, elector: Factory) -> None:
    a = await elector("controller-a", Clock())
    b = await elector("controller-b", Clock())
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert not _lease(kube_api)["spec"].get("holderIdentity")
    assert await b.try_acquire_or_renew()  # at once: no lease duration to wait out
    await a.release()  # not ours any more: left alone
    assert _lease(kube_api)["spec"]["holderIdentity"] == "controller-b"


def test_the_lease_calls_are_in_the_api_calls_list() -> None:
    """RBAC is derived from api_calls.CALLS: the elector's get/create/update are there."""
    verbs = {call.verb for call in CALLS if call.resource is LEASES}
    assert verbs == {"get", "create", "update"}


def test_identity_and_namespace_come_from_the_downward_api(tmp_path: Path) -> None:
    environ = {"POD_NAME": "egresswatch-controller-5d9c-x2x", "POD_NAMESPACE": "observability"}
    assert lease_identity(None, environ) == "egresswatch-controller-5d9c-x2x"
    assert lease_identity("fixed", environ) == "fixed"
    assert lease_identity(None, {}).rsplit("_", 1)[1].isdigit()  # HOSTNAME_PID
    missing = tmp_path / "namespace"
    assert lease_namespace(None, environ, missing) == "observability"
    assert lease_namespace(None, {}, missing) == "default"
    missing.write_text("egresswatch\n")
    assert lease_namespace(None, {}, missing) == "egresswatch"


def test_lease_timing_out_of_order_is_refused_naming_the_fields() -> None:
    with pytest.raises(ValidationError, match="retry_period < renew_deadline < lease_duration"):
        LeaderElectionSettings.model_validate({"lease_duration": "5s", "renew_deadline": "10s"})
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaseTiming(duration_s=2.0, renew_deadline_s=2.0, retry_period_s=1.0)


async def test_a_controller_that_loses_the_lease_stops_its_leader_work(
    kube_api: RunningKubeApi, tmp_path: Path
) -> None:
    """The wiring: leading, the replica runs discovery and its pipeline follows the rounds
    table; when another holder takes the Lease it stops both at once and drops detection's
    state (a fresh pipeline), and `egresswatch_leader` says 0."""
    settings = Settings.model_validate(
        {
            "listen": f"127.0.0.1:{free_port()}",
            "database": f"sqlite+aiosqlite:///{tmp_path / 'controller.db'}",
            "targets": [{"name": "shop", "url": "https://127.0.0.1:9/"}],
            "kubernetes": {
                "enabled": True,
                "kubeconfig": str(kube_api.kubeconfig),
                "leader_election": {
                    "identity": "controller-a",
                    "lease_namespace": NAMESPACE,
                    "lease_duration": "3s",
                    "renew_deadline": "2s",
                    "retry_period": "200ms",
                },
            },
        }
    )
    service = Service(settings, migrate=True, watch_config=False, local_agent=False)
    await service.start()
    try:
        await wait_for(lambda: service.leading and service.discovery is not None, 10)
        leaders_pipeline = service.pipeline
        assert _leader_metric(service) == 1.0
        taken = _lease(kube_api)
        taken["spec"]["holderIdentity"] = "controller-b"
        kube_api.api.apply(taken)
        await wait_for(lambda: not service.leading and service.discovery is None, 10)
        assert service.pipeline is not leaders_pipeline
        assert _leader_metric(service) == 0.0
    finally:
        await service.stop()
    # Not the holder at the stop: the Lease is left to controller-b.
    assert _lease(kube_api)["spec"]["holderIdentity"] == "controller-b"


def _leader_metric(service: Service) -> float | None:
    return service.registry.get_sample_value("egresswatch_leader", {"identity": "controller-a"})
