"""The rounds table read in id order: what the leading controller judges, whoever stored it.

Every controller replica stores the rounds its agents post; the leader follows the table by id
(the primary key's index) so that rounds stored by any replica, its own included, reach its
detection through one path.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.model import RoundResult
from egresswatch.storage import tables as t
from egresswatch.storage.rows import read_numbered_rounds

__all__ = ["RoundFeed"]


class RoundFeed:
    """Reads stored rounds by id over an injected AsyncEngine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def last_id(self) -> int:
        """The greatest round id stored now (0 when there is none)."""
        async with self.engine.connect() as conn:
            found = (await conn.execute(sa.select(sa.func.max(t.rounds.c.id)))).scalar()
        return int(found or 0)

    async def rounds(
        self, *, after: int, also: Collection[int] = (), limit: int = 1000
    ) -> list[tuple[int, RoundResult]]:
        """Up to `limit` rounds with an id above `after`, plus those whose id is in `also`
        (ids passed over before: a transaction that had not committed yet), in id order."""
        r = t.rounds
        newer = r.c.id > after
        wanted = sa.or_(newer, r.c.id.in_(list(also))) if also else newer
        async with self.engine.connect() as conn:
            # The newest `limit` by id first (index range), then read with their steps.
            ids = sa.select(r.c.id).where(wanted).order_by(r.c.id).limit(limit).scalar_subquery()
            found = await read_numbered_rounds(conn, r.c.id.in_(ids))
        return sorted(found, key=lambda pair: pair[0])
