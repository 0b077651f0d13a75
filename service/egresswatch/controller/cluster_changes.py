"""What changed in the cluster, for incidents: the changes the discovery saw, kept in a bounded
recent log and stored, and attached to each incident as it opens.

An incident gets the changes seen from `window` before its first failed round until it was
detected (a watch event can arrive a moment after the round its change broke) that concern one
of its sources (`kube.changes.concerns`): NetworkPolicies of a pod source's namespace, the
source's node (a node source, or the node a pod source's agent reported), and every CoreDNS
change.

`seen` and `incident_event` are synchronous (watch hooks and the pipeline's callback);
`flush` does the writes, on the controller's tick, and keeps what failed for the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from egresswatch.controller.detection.incidents import Incident, IncidentEvent, IncidentEventKind
from egresswatch.kube.changes import ChangeLog, ClusterChange, concerns
from egresswatch.model import SourceKind
from egresswatch.storage import ClusterChanges, SourceRecord

__all__ = ["ChangeAttacher"]

log = logging.getLogger(__name__)

UNSAVED_MAX = 10_000  # changes held while the database is away


class ChangeAttacher:
    """Records cluster changes and links them to the incidents they may explain."""

    def __init__(
        self,
        store: ClusterChanges,
        *,
        window: Callable[[], timedelta],
        sources: Callable[[], Awaitable[Sequence[SourceRecord]]],
        recent: ChangeLog | None = None,
    ) -> None:
        self._store = store
        self._window = window
        self._sources = sources
        self.recent = recent or ChangeLog()
        self._unsaved: list[ClusterChange] = []
        self._opened: list[Incident] = []

    def seen(self, change: ClusterChange) -> None:
        """A change the watches saw: in the recent log now, stored on the next flush."""
        self.recent.add([change])
        self._unsaved.append(change)
        if len(self._unsaved) > UNSAVED_MAX:  # a long database outage: keep the newest
            del self._unsaved[0]
        log.info("cluster change", extra={"change": change.summary})

    def incident_event(self, event: IncidentEvent) -> None:
        """The pipeline's incident callback: an opened incident gets its changes on flush."""
        if event.kind is IncidentEventKind.OPENED:
            self._opened.append(event.incident)

    async def restore(self, now: datetime) -> None:
        """The recent log from the database, so a restart keeps what was seen before it."""
        self.recent.add(await self._store.between(now - timedelta(days=1), now))

    async def flush(self) -> None:
        """Store the changes seen, then link the incidents opened, since the last flush. A
        failure (the database away) keeps both for the next flush, and is raised."""
        if self._unsaved:
            await self._store.save(self._unsaved)
            self._unsaved = []
        while self._opened:
            await self._attach(self._opened[0])
            self._opened.pop(0)

    async def _attach(self, incident: Incident) -> None:
        start = incident.started_at - self._window()
        candidates = self.recent.between(start, incident.detected_at)
        if not candidates:
            return
        where = _where(await self._sources(), incident.sources)
        found = [
            c for c in candidates if any(concerns(c, namespace=ns, node=node) for ns, node in where)
        ]
        await self._store.attach(incident.id, found)
        if found:
            log.info(
                "cluster changes attached to an incident",
                extra={"incident": incident.id, "changes": [c.summary for c in found]},
            )


def _where(
    known: Sequence[SourceRecord], names: Sequence[str]
) -> list[tuple[str | None, str | None]]:
    """(namespace, node) of each named source: a pod source's namespace is its name's first
    part (NAMESPACE/WORKLOAD@NODE), its node the one its agent reported."""
    records = {s.name: s for s in known}
    where: list[tuple[str | None, str | None]] = []
    for name in names:
        record = records.get(name)
        kind = record.kind if record else None
        node = record.node if record else None
        if kind is SourceKind.NODE:
            where.append((None, node or name))
        else:
            namespace = name.split("/", 1)[0] if "/" in name else None
            where.append((namespace, node))
    return where
