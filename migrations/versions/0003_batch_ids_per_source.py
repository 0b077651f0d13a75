"""Ingest batch ids are unique per source, not globally.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 22:20:00

An agent chooses its batch ids; with a global unique index another source's batch that reused
an id was taken for a retry and silently dropped. The unique constraint is now (source,
batch_id). A batch ledger row is pruned with its rounds' raw window, so a downgrade that finds
two sources sharing an id fails on the old global constraint: delete the older row first.
Written to match egresswatch.storage.tables (tests/test_migrations.py compares them).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot drop a constraint in place (the table is copied).
    with op.batch_alter_table("ingest_batches") as batch:
        batch.drop_constraint("uq_ingest_batches_batch_id", type_="unique")
        batch.create_unique_constraint("uq_ingest_batches_source_batch_id", ["source", "batch_id"])


def downgrade() -> None:
    with op.batch_alter_table("ingest_batches") as batch:
        batch.drop_constraint("uq_ingest_batches_source_batch_id", type_="unique")
        batch.create_unique_constraint("uq_ingest_batches_batch_id", ["batch_id"])
