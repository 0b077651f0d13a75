"""Storage: the schema (through Alembic), the Store, the batched writer, rollups and pruning,
and History (changes, incidents, step states).

Everything here speaks `egresswatch.model` types and the frozen types defined in this package;
table rows never leave it. SQLite (aiosqlite) and PostgreSQL (asyncpg) behave the same.
"""

from egresswatch.storage.cluster_changes import ClusterChanges
from egresswatch.storage.feed import RoundFeed
from egresswatch.storage.history import BadCursor, History, Page
from egresswatch.storage.outage import DatabaseProbe, Outage, describe, is_unavailable
from egresswatch.storage.policy import Resolution, RetentionWindows, choose_resolution
from egresswatch.storage.records import (
    IncidentRecord,
    SourceRecord,
    StateRecord,
    TargetRecord,
)
from egresswatch.storage.retention import (
    PruneReport,
    RollupReport,
    prune,
    rollup,
    run_retention,
)
from egresswatch.storage.schema import (
    DatabaseNotReady,
    SchemaState,
    SchemaStatus,
    alembic_config,
    downgrade,
    ensure_schema,
    make_engine,
    normalize_url,
    redact,
    schema_state,
    upgrade,
)
from egresswatch.storage.store import Store
from egresswatch.storage.timeline import Timeline, TimelinePoint
from egresswatch.storage.writer import BatchedWriter, NoHooks, RoundSink, WriterHooks

__all__ = [
    "BadCursor",
    "BatchedWriter",
    "ClusterChanges",
    "DatabaseNotReady",
    "DatabaseProbe",
    "History",
    "IncidentRecord",
    "NoHooks",
    "Outage",
    "Page",
    "PruneReport",
    "Resolution",
    "RetentionWindows",
    "RollupReport",
    "RoundFeed",
    "RoundSink",
    "SchemaState",
    "SchemaStatus",
    "SourceRecord",
    "StateRecord",
    "Store",
    "TargetRecord",
    "Timeline",
    "TimelinePoint",
    "WriterHooks",
    "alembic_config",
    "choose_resolution",
    "describe",
    "downgrade",
    "ensure_schema",
    "is_unavailable",
    "make_engine",
    "normalize_url",
    "prune",
    "redact",
    "rollup",
    "run_retention",
    "schema_state",
    "upgrade",
]
