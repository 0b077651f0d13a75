"""Initial schema: sources, targets, ingest batches, rounds, step results, rollups.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 06:48:32

Written to match egresswatch.storage.tables (tests/test_migrations.py checks that autogenerate
finds no difference on SQLite and PostgreSQL). Room left for the next revision: `changes` and
`incidents` will reference sources and targets; "the latest round per (source, target)" is
served by ix_rounds_source_id_target_id_started_at.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIME = sa.DateTime(timezone=True)
NAME = sa.String(length=253)
CODE = sa.String(length=32)


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("kind", CODE, nullable=True),
        sa.Column("first_seen", TIME, nullable=False),
        sa.Column("last_seen", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sources")),
        sa.UniqueConstraint("name", name=op.f("uq_sources_name")),
    )
    op.create_table(
        "targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("role", CODE, nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("first_seen", TIME, nullable=False),
        sa.Column("last_seen", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_targets")),
        sa.UniqueConstraint("name", name=op.f("uq_targets_name")),
    )
    op.create_table(
        "ingest_batches",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("batch_id", sa.String(length=128), nullable=False),
        sa.Column("source", NAME, nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_batches")),
        sa.UniqueConstraint("batch_id", name=op.f("uq_ingest_batches_batch_id")),
    )
    op.create_index("ix_ingest_batches_received_at", "ingest_batches", ["received_at"])

    op.create_table(
        "rounds",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("first_failing_step", CODE, nullable=True),
        sa.Column("batch_id", BIG_ID, nullable=True),
        sa.ForeignKeyConstraint(
            ["source_id"], ["sources.id"], name=op.f("fk_rounds_source_id_sources")
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_rounds_target_id_targets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rounds")),
    )
    op.create_index("ix_rounds_target_id_started_at", "rounds", ["target_id", "started_at"])
    op.create_index(
        "ix_rounds_source_id_target_id_started_at",
        "rounds",
        ["source_id", "target_id", "started_at"],
    )
    op.create_index("ix_rounds_started_at", "rounds", ["started_at"])

    op.create_table(
        "step_results",
        sa.Column("round_id", BIG_ID, nullable=False),
        sa.Column("step", CODE, nullable=False),
        sa.Column("status", CODE, nullable=False),
        sa.Column("reason", CODE, nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("evidence", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.id"],
            name=op.f("fk_step_results_round_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("round_id", "step", name=op.f("pk_step_results")),
    )

    op.create_table(
        "rollups",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("resolution", sa.String(length=8), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("step", CODE, nullable=False),
        sa.Column("bucket_start", TIME, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("p50_s", sa.Float(), nullable=True),
        sa.Column("p95_s", sa.Float(), nullable=True),
        sa.Column("p99_s", sa.Float(), nullable=True),
        sa.Column("max_s", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["source_id"], ["sources.id"], name=op.f("fk_rollups_source_id_sources")
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_rollups_target_id_targets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollups")),
        sa.UniqueConstraint(
            "target_id",
            "resolution",
            "bucket_start",
            "source_id",
            "step",
            name=op.f("uq_rollups_target_id_resolution_bucket_start_source_id_step"),
        ),
    )
    op.create_index("ix_rollups_resolution_bucket_start", "rollups", ["resolution", "bucket_start"])

    op.create_table(
        "rollup_pending",
        sa.Column("resolution", sa.String(length=8), nullable=False),
        sa.Column("bucket_start", TIME, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("resolution", "bucket_start", name=op.f("pk_rollup_pending")),
    )


def downgrade() -> None:
    op.drop_table("rollup_pending")
    op.drop_index("ix_rollups_resolution_bucket_start", table_name="rollups")
    op.drop_table("rollups")
    op.drop_table("step_results")
    op.drop_index("ix_rounds_started_at", table_name="rounds")
    op.drop_index("ix_rounds_source_id_target_id_started_at", table_name="rounds")
    op.drop_index("ix_rounds_target_id_started_at", table_name="rounds")
    op.drop_table("rounds")
    op.drop_index("ix_ingest_batches_received_at", table_name="ingest_batches")
    op.drop_table("ingest_batches")
    op.drop_table("targets")
    op.drop_table("sources")
