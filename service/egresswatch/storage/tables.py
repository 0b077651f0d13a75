"""The database schema as SQLAlchemy Core tables: the one source autogenerate compares against.

The schema itself is created only by the Alembic migrations in `migrations/` (shipped as
`egresswatch.migrations`); this module describes it so queries can be built and
`alembic revision --autogenerate` can diff it.
Rows never leave the storage package: the public API speaks `egresswatch.model` types.

Conventions, identical on SQLite and PostgreSQL:
- times are `UTCDateTime`: aware UTC datetimes in Python, `timestamptz` on PostgreSQL, naive UTC
  text on SQLite (one fixed format, so text order is time order);
- step, status, reason, role, kind and resolution are short strings, not database enums: the
  vocabularies grow, and an enum type would need a migration for every new reason;
- ids of the big tables are BIGINT on PostgreSQL and INTEGER on SQLite (only an INTEGER primary
  key is SQLite's auto-incrementing rowid).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

# Stable constraint names: batch mode on SQLite recreates tables and needs names to find them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# JSON stored as the text sent (PostgreSQL `json`: checked for syntax, not parsed into jsonb):
# for the hot ingest tables' values that nothing queries inside (migration 0006).
JsonText = sa.JSON()
Name = sa.String(253)  # a DNS name's maximum length; sources and targets are named like hosts
Code = sa.String(32)  # step ids, statuses, reasons and other closed vocabularies


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC datetime, stored the same way on both databases.

    Binding a naive datetime raises: a time without a zone is ambiguous and would be stored
    wrong on one of the two databases.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: storage needs timezone-aware times")
        value = value.astimezone(UTC)
        # SQLite stores text: drop the zone so every value has the same format and sorts as text.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def copy(self, **kw: Any) -> UTCDateTime:
        return UTCDateTime()


sources = sa.Table(
    "sources",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", Name, nullable=False, unique=True),
    # `pod` or `node`; NULL until someone registers it (a round names its source, not its kind).
    sa.Column("kind", Code, nullable=True),
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
    # The node it runs on (a pod's NODE_NAME), so a pod is compared with its own node.
    sa.Column("node", Name, nullable=True),
)

targets = sa.Table(
    "targets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", Name, nullable=False, unique=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("role", Code, nullable=False),
    # False once the target left the config: its history stays, the status page hides it.
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
)

ingest_batches = sa.Table(
    "ingest_batches",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    # Chosen by the agent; unique per source so a retried POST stores nothing twice, while
    # another source's batch that happens to reuse the id is its own (migration 0003).
    sa.Column("batch_id", sa.String(128), nullable=False),
    sa.Column("source", Name, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("rounds", sa.Integer, nullable=False),
    sa.Index("ix_ingest_batches_received_at", "received_at"),  # pruning
    sa.UniqueConstraint("source", "batch_id"),
)

rounds = sa.Table(
    "rounds",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    # No foreign keys on rounds and step_results (migration 0006): on PostgreSQL each is a
    # trigger and a query per inserted row, more than a third of ingest's server CPU. Sources and
    # targets are never deleted, and a round's steps are written and pruned with it.
    sa.Column("source_id", sa.Integer, nullable=False),
    sa.Column("target_id", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    # Time spent in the round's steps (their sum): RoundResult carries no finish time.
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("first_failing_step", Code, nullable=True),
    # ingest_batches.id of the batch that brought the round, NULL for local rounds. Not a
    # foreign key on purpose: the batch ledger is pruned on its own, and a foreign key would make
    # every batch deletion scan rounds for referencing rows (there is no index on this column).
    sa.Column("batch_id", BigId, nullable=True),
    # Timeline of a target across sources.
    sa.Index("ix_rounds_target_id_started_at", "target_id", "started_at"),
    # One (source, target) over time; also "latest round per (source, target)" for change
    # detection, which compares both ids for equality and so is served in either column order.
    sa.Index("ix_rounds_source_id_target_id_started_at", "source_id", "target_id", "started_at"),
    # Rollups read one time bucket across all pairs; pruning deletes the oldest.
    sa.Index("ix_rounds_started_at", "started_at"),
)

step_results = sa.Table(
    "step_results",
    metadata,
    # The primary key (round_id, step) is also the index for "the steps of these rounds".
    sa.Column("round_id", BigId, primary_key=True),  # rounds.id, not a foreign key (above)
    sa.Column("step", Code, primary_key=True),
    sa.Column("status", Code, nullable=False),
    sa.Column("reason", Code, nullable=True),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("evidence", JsonText, nullable=False),
)

rollups = sa.Table(
    "rollups",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("resolution", sa.String(8), nullable=False),  # 'minute' or 'hour'
    sa.Column("source_id", sa.Integer, sa.ForeignKey("sources.id"), nullable=False),
    sa.Column("target_id", sa.Integer, sa.ForeignKey("targets.id"), nullable=False),
    sa.Column("step", Code, nullable=False),
    sa.Column("bucket_start", UTCDateTime, nullable=False),
    # `count` results ran (ok or fail), `failures` of them failed; skipped and error results are
    # counted apart because they say nothing about the target's latency or availability.
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("skipped", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    # Quantiles of the `count` results' durations; NULL when none ran.
    sa.Column("p50_s", sa.Float, nullable=True),
    sa.Column("p95_s", sa.Float, nullable=True),
    sa.Column("p99_s", sa.Float, nullable=True),
    sa.Column("max_s", sa.Float, nullable=True),
    # One row per key; the leading columns are the timeline's index (target, resolution, time).
    sa.UniqueConstraint("target_id", "resolution", "bucket_start", "source_id", "step"),
    sa.Index("ix_rollups_resolution_bucket_start", "resolution", "bucket_start"),  # pruning
)

# Time buckets that received raw rounds since they were last rolled up. save_rounds marks them
# in the same transaction as the rounds, so rounds that arrive late (an agent that buffered while
# the controller was away) are rolled up too, and prune never drops raw rows not yet rolled up.
# `version` grows on every mark: rollup unmarks only the version it read, so a mark made while it
# was computing survives and the bucket is computed again.
rollup_pending = sa.Table(
    "rollup_pending",
    metadata,
    sa.Column("resolution", sa.String(8), primary_key=True),
    sa.Column("bucket_start", UTCDateTime, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

# -- change detection and diagnosis (migration 0002) -----------------------------------------

# A step's state flipping for a (source, target), after hysteresis: the change log. Kept longest
# (DESIGN.md §4), so it references sources and targets by id like the results do.
changes = sa.Table(
    "changes",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("source_id", sa.Integer, sa.ForeignKey("sources.id"), nullable=False),
    sa.Column("target_id", sa.Integer, sa.ForeignKey("targets.id"), nullable=False),
    sa.Column("step", Code, nullable=True),  # NULL: the whole (source, target) (staleness)
    sa.Column("previous", Code, nullable=False),
    sa.Column("current", Code, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("detected_at", UTCDateTime, nullable=False),
    sa.Column("reason", Code, nullable=True),
    sa.Column("detail", sa.Text, nullable=False),
    # Keyset pagination, newest first, with and without a target or source filter. On SQLite
    # every index also holds the rowid (= id), so all three serve the (detected_at, id) order.
    sa.Index("ix_changes_detected_at_id", "detected_at", "id"),
    sa.Index("ix_changes_target_id_detected_at", "target_id", "detected_at"),
    sa.Index("ix_changes_source_id_detected_at", "source_id", "detected_at"),
)

# A period in which a target is failing from one or more sources. The id is chosen by the
# controller (so an incident is updated in place as it evolves); `sources`, `evidence` and
# `history` are JSON lists; `ended_at` is NULL while the incident is open.
incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("target_id", sa.Integer, sa.ForeignKey("targets.id"), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("detected_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("sources", Json, nullable=False),
    sa.Column("first_failing_step", Code, nullable=True),
    sa.Column("suspect", Code, nullable=False),
    sa.Column("evidence", Json, nullable=False),
    sa.Column("next_command", sa.Text, nullable=True),
    sa.Column("history", Json, nullable=False),
    # A target's incidents over time, and the one open at a moment (History.incident_at).
    sa.Index("ix_incidents_target_id_started_at", "target_id", "started_at"),
    # Keyset pagination of all incidents, newest first.
    sa.Index("ix_incidents_started_at_id", "started_at", "id"),
    # Open incidents (ended_at IS NULL) without reading the closed ones.
    sa.Index("ix_incidents_ended_at", "ended_at"),
)

# The current state of each step of each (source, target): the latest change wins, by
# detected_at. `step` is '' for the whole pair (a primary key column cannot be NULL). The key
# leads with the target: the API reads the states of one target (History.states(target)).
step_states = sa.Table(
    "step_states",
    metadata,
    sa.Column("source_id", sa.Integer, sa.ForeignKey("sources.id"), nullable=False),
    sa.Column("target_id", sa.Integer, sa.ForeignKey("targets.id"), nullable=False),
    sa.Column("step", Code, nullable=False),
    sa.Column("state", Code, nullable=False),
    sa.Column("since", UTCDateTime, nullable=False),  # started_at of the change that set it
    sa.Column("reason", Code, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),  # detected_at of that change
    sa.PrimaryKeyConstraint("target_id", "source_id", "step"),
)

# -- what changed in the cluster (migration 0005) --------------------------------------------

# Kubernetes changes the controller saw (kube/changes.py). The id is derived from the change
# (ClusterChange.id), so replicas storing one change store it once; kept as long as `changes`.
cluster_changes = sa.Table(
    "cluster_changes",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("seen_at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("namespace", Name, nullable=True),  # NULL: a cluster-scoped object (a Node)
    sa.Column("name", Name, nullable=False),
    sa.Column("action", Code, nullable=False),
    sa.Column("details", Json, nullable=False),  # a JSON list of short phrases
    sa.Index("ix_cluster_changes_seen_at", "seen_at"),
)

# The cluster changes attached to an incident when it opened.
incident_cluster_changes = sa.Table(
    "incident_cluster_changes",
    metadata,
    sa.Column("incident_id", sa.String(128), sa.ForeignKey("incidents.id"), nullable=False),
    sa.Column("change_id", sa.String(64), sa.ForeignKey("cluster_changes.id"), nullable=False),
    sa.PrimaryKeyConstraint("incident_id", "change_id"),
    sa.Index("ix_incident_cluster_changes_change_id", "change_id"),
)
