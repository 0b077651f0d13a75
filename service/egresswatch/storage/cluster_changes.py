"""What changed in the cluster, stored: the changes seen (kube.changes.ClusterChange) and the
ones attached to each incident. Kept like the step changes and incidents (never pruned by
retention): an incident's "what did we change" must outlive the raw rounds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.kube.changes import ClusterChange
from egresswatch.storage import tables as t
from egresswatch.storage.rows import upsert

__all__ = ["ClusterChanges"]


class ClusterChanges:
    """Reads and writes `cluster_changes` and `incident_cluster_changes`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def save(self, changes: Sequence[ClusterChange]) -> None:
        """Store `changes`; one already stored (same id, e.g. by another replica) is kept."""
        if not changes:
            return
        rows = [_row(change) for change in changes]
        async with self._engine.begin() as conn:
            statement = upsert(conn, t.cluster_changes).values(rows)
            await conn.execute(statement.on_conflict_do_nothing(index_elements=["id"]))

    async def between(self, start: datetime, end: datetime) -> list[ClusterChange]:
        """The changes seen in [start, end], oldest first."""
        c = t.cluster_changes
        query = (
            sa.select(c)
            .where(c.c.seen_at >= start, c.c.seen_at <= end)
            .order_by(c.c.seen_at, c.c.id)
        )
        async with self._engine.connect() as conn:
            return [_change(row) for row in (await conn.execute(query)).mappings()]

    async def attach(self, incident_id: str, changes: Iterable[ClusterChange]) -> None:
        """Link `changes` (stored) to the incident; a link made before stays."""
        rows = [{"incident_id": incident_id, "change_id": change.id} for change in changes]
        if not rows:
            return
        async with self._engine.begin() as conn:
            statement = upsert(conn, t.incident_cluster_changes).values(rows)
            await conn.execute(statement.on_conflict_do_nothing())

    async def of_incidents(self, incident_ids: Sequence[str]) -> Mapping[str, list[ClusterChange]]:
        """incident id -> its attached changes, oldest first (ids with none are left out)."""
        if not incident_ids:
            return {}
        c, link = t.cluster_changes, t.incident_cluster_changes
        query = (
            sa.select(link.c.incident_id, c)
            .join(c, c.c.id == link.c.change_id)
            .where(link.c.incident_id.in_(list(incident_ids)))
            .order_by(c.c.seen_at, c.c.id)
        )
        found: dict[str, list[ClusterChange]] = {}
        async with self._engine.connect() as conn:
            for row in (await conn.execute(query)).mappings():
                found.setdefault(row["incident_id"], []).append(_change(row))
        return found


def _row(change: ClusterChange) -> dict[str, object]:
    return {
        "id": change.id,
        "seen_at": change.seen_at,
        "kind": change.kind,
        "namespace": change.namespace,
        "name": change.name,
        "action": change.action,
        "details": list(change.details),
    }


def _change(row: sa.RowMapping) -> ClusterChange:
    seen_at = row["seen_at"]
    assert isinstance(seen_at, datetime)
    details = row["details"]
    return ClusterChange(
        seen_at=seen_at,
        kind=str(row["kind"]),
        namespace=str(row["namespace"]) if row["namespace"] is not None else None,
        name=str(row["name"]),
        action=str(row["action"]),
        details=tuple(str(d) for d in details) if isinstance(details, list) else (),
    )
