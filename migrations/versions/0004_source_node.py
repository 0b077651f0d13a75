"""A source's node: the node a pod source runs on (its agent's NODE_NAME, issue 9).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 23:20:00

A pod round is compared with the rounds of its own node (source_compare); the node comes
with every batch of the source (`source_node`) and is stored on the source: a designated pod
source's name already contains its node (NAMESPACE/WORKLOAD@NODE), so it never changes for a
source. NULL for sources whose agent does not say (older agents, `--source` without NODE_NAME).
Written to match egresswatch.storage.tables (tests/test_migrations.py compares them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("node", sa.String(253), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sources") as batch:
        batch.drop_column("node")
