"""Change detection and diagnosis: changes, incidents, step states.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 09:12:00

Written to match egresswatch.storage.tables (tests/test_migrations.py checks that autogenerate
finds no difference on SQLite and PostgreSQL). Nothing new on `rounds`: "the latest round per
(source, target) at a moment" (History.latest_rounds) is one descent of
ix_rounds_source_id_target_id_started_at per pair.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIME = sa.DateTime(timezone=True)
CODE = sa.String(length=32)


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("step", CODE, nullable=True),
        sa.Column("previous", CODE, nullable=False),
        sa.Column("current", CODE, nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("detected_at", TIME, nullable=False),
        sa.Column("reason", CODE, nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_id"], ["sources.id"], name=op.f("fk_changes_source_id_sources")
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_changes_target_id_targets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_changes")),
    )
    op.create_index("ix_changes_detected_at_id", "changes", ["detected_at", "id"])
    op.create_index("ix_changes_target_id_detected_at", "changes", ["target_id", "detected_at"])
    op.create_index("ix_changes_source_id_detected_at", "changes", ["source_id", "detected_at"])

    op.create_table(
        "incidents",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("detected_at", TIME, nullable=False),
        sa.Column("ended_at", TIME, nullable=True),
        sa.Column("sources", JSON, nullable=False),
        sa.Column("first_failing_step", CODE, nullable=True),
        sa.Column("suspect", CODE, nullable=False),
        sa.Column("evidence", JSON, nullable=False),
        sa.Column("next_command", sa.Text(), nullable=True),
        sa.Column("history", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_incidents_target_id_targets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
    )
    op.create_index("ix_incidents_target_id_started_at", "incidents", ["target_id", "started_at"])
    op.create_index("ix_incidents_started_at_id", "incidents", ["started_at", "id"])
    op.create_index("ix_incidents_ended_at", "incidents", ["ended_at"])

    op.create_table(
        "step_states",
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("step", CODE, nullable=False),
        sa.Column("state", CODE, nullable=False),
        sa.Column("since", TIME, nullable=False),
        sa.Column("reason", CODE, nullable=True),
        sa.Column("updated_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["source_id"], ["sources.id"], name=op.f("fk_step_states_source_id_sources")
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_step_states_target_id_targets")
        ),
        sa.PrimaryKeyConstraint("target_id", "source_id", "step", name=op.f("pk_step_states")),
    )


def downgrade() -> None:
    op.drop_table("step_states")
    op.drop_index("ix_incidents_ended_at", table_name="incidents")
    op.drop_index("ix_incidents_started_at_id", table_name="incidents")
    op.drop_index("ix_incidents_target_id_started_at", table_name="incidents")
    op.drop_table("incidents")
    op.drop_index("ix_changes_source_id_detected_at", table_name="changes")
    op.drop_index("ix_changes_target_id_detected_at", table_name="changes")
    op.drop_index("ix_changes_detected_at_id", table_name="changes")
    op.drop_table("changes")
