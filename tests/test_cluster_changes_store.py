"""Cluster changes stored and attached to incidents (storage/cluster_changes.py and
controller/cluster_changes.py) on SQLite and PostgreSQL: an incident gets the changes of its
window that concern its sources, and a restarted controller still has the recent ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from egresswatch.controller.cluster_changes import ChangeAttacher
from egresswatch.controller.detection.incidents import (
    Incident,
    IncidentEvent,
    IncidentEventKind,
)
from egresswatch.kube.changes import ClusterChange
from egresswatch.model import SourceKind, Step, Suspect
from egresswatch.storage import ClusterChanges, History, IncidentRecord, Store
from tests.support.databases import store_fixture  # noqa: F401

START = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
NODE = "aks-nodepool1-12345678-vmss000000"
POD = f"payments/egresswatch-probe@{NODE}"


def before(minutes: float, kind: str, namespace: str | None, name: str) -> ClusterChange:
    return ClusterChange(START - timedelta(minutes=minutes), kind, namespace, name, "changed")


CHANGES = [
    before(45, "NetworkPolicy", "payments", "too-early"),  # outside the 30 min window
    before(20, "NetworkPolicy", "payments", "allow-https-out"),
    before(15, "NetworkPolicy", "shop", "other-namespace"),
    before(10, "Node", None, NODE),
    before(9, "Node", None, "another-node"),
    before(5, "ConfigMap", "kube-system", "coredns-custom"),
    before(-5, "Pod", "kube-system", "coredns-after-detection"),
]


def incident(incident_id: str) -> Incident:
    return Incident(
        id=incident_id,
        target="shop",
        started_at=START,
        detected_at=START + timedelta(minutes=1),
        ended_at=None,
        sources=(POD,),
        first_failing_step=Step.TCP_CONNECT,
        suspect=Suspect.NETWORK_POLICY,
        evidence=(),
        next_command=None,
        history=(),
    )


async def _stored(store: Store, found: Incident) -> None:
    await store.sync_targets([("shop", "https://shop.test/", "endpoint")])
    await store.register_source(POD, SourceKind.POD, NODE)
    fields = {k: getattr(found, k) for k in ("id", "target", "started_at", "detected_at")}
    record = IncidentRecord(
        **fields,
        ended_at=None,
        sources=found.sources,
        first_failing_step=found.first_failing_step,
        suspect=found.suspect,
        evidence=(),
        next_command=None,
        history=(),
    )
    await History(store.engine).save_incident(record)


def attacher(store: Store) -> ChangeAttacher:
    return ChangeAttacher(
        ClusterChanges(store.engine),
        window=lambda: timedelta(minutes=30),
        sources=store.sources,
    )


async def test_an_opened_incident_gets_the_changes_that_concern_it(store: Store) -> None:
    opened = incident("inc-1")
    await _stored(store, opened)
    first = attacher(store)
    for change in CHANGES:
        first.seen(change)
    first.incident_event(IncidentEvent(IncidentEventKind.OPENED, opened))
    await first.flush()
    attached = await ClusterChanges(store.engine).of_incidents(["inc-1", "inc-none"])
    assert [c.name for c in attached["inc-1"]] == ["allow-https-out", NODE, "coredns-custom"]
    assert "inc-none" not in attached
    await first.flush()  # nothing twice
    assert len((await ClusterChanges(store.engine).of_incidents(["inc-1"]))["inc-1"]) == 3

    # A restarted controller: the recent log comes back from the database, so an incident
    # opened after the restart still gets the changes seen before it.
    second = attacher(store)
    await second.restore(START + timedelta(minutes=10))
    assert len(second.recent) == len(CHANGES)
    again = incident("inc-2")
    await _stored(store, again)
    second.incident_event(IncidentEvent(IncidentEventKind.OPENED, again))
    await second.flush()
    attached = await ClusterChanges(store.engine).of_incidents(["inc-2"])
    assert [c.name for c in attached["inc-2"]] == ["allow-https-out", NODE, "coredns-custom"]
    assert attached["inc-2"] == [
        c for c in CHANGES if c.name in {"allow-https-out", NODE, "coredns-custom"}
    ]
