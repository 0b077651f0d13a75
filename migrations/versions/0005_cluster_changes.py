"""What changed in the cluster: the Kubernetes changes seen, and those attached to incidents.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 23:55:00

`cluster_changes` holds what kube/changes.py makes of the watch events (NetworkPolicies, Nodes,
CoreDNS pods and ConfigMaps); `incident_cluster_changes` links an incident to the changes seen
in the window before its first failed round. Written to match egresswatch.storage.tables
(tests/test_migrations.py compares them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cluster_changes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("seen_at", TIME, nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("namespace", sa.String(length=253), nullable=True),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("details", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cluster_changes")),
    )
    op.create_index(
        op.f("ix_cluster_changes_seen_at"), "cluster_changes", ["seen_at"], unique=False
    )
    op.create_table(
        "incident_cluster_changes",
        sa.Column("incident_id", sa.String(length=128), nullable=False),
        sa.Column("change_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["change_id"],
            ["cluster_changes.id"],
            name=op.f("fk_incident_cluster_changes_change_id_cluster_changes"),
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_incident_cluster_changes_incident_id_incidents"),
        ),
        sa.PrimaryKeyConstraint(
            "incident_id", "change_id", name=op.f("pk_incident_cluster_changes")
        ),
    )
    op.create_index(
        op.f("ix_incident_cluster_changes_change_id"),
        "incident_cluster_changes",
        ["change_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_incident_cluster_changes_change_id"), table_name="incident_cluster_changes"
    )
    op.drop_table("incident_cluster_changes")
    op.drop_index(op.f("ix_cluster_changes_seen_at"), table_name="cluster_changes")
    op.drop_table("cluster_changes")
