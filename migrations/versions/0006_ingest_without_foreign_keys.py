"""Cheaper ingest: no foreign keys on rounds and step results, evidence stored as json text.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 01:55:00

Issue 14's ingest target. On PostgreSQL every inserted row of these two tables fired a foreign
key check (a trigger running a query: 8 per round of 6 steps), and every evidence value was
parsed into jsonb; together more than half of the server's CPU per round (docs/performance.md,
"Issue 14, continued"). Nothing deletes sources or targets, retention deletes a round's steps
with the round, and the writer inserts both in one transaction with ids from the sequence: the
checks guarded nothing the code does not already hold. Nothing queries inside the evidence, so
`json` (the text as sent, checked for syntax only) replaces `jsonb`; reading it back is the
same to the application.

SQLite never enforced these keys (no `PRAGMA foreign_keys`); batch mode copies `rounds` and
`step_results` there to drop them, and PostgreSQL rewrites `step_results` for the type: about
5 s per million step results, the tables locked meanwhile (docs/deploy.md). The
downgrade puts the keys back (it fails if a row has lost its parent) and jsonb.
Written to match egresswatch.storage.tables (tests/test_migrations.py compares them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STEP_ROUND_FK = "fk_step_results_round_id_rounds"
ROUND_FKS = (("fk_rounds_source_id_sources", "sources"), ("fk_rounds_target_id_targets", "targets"))


def upgrade() -> None:
    with op.batch_alter_table("step_results") as batch:
        batch.drop_constraint(STEP_ROUND_FK, type_="foreignkey")
    with op.batch_alter_table("rounds") as batch:
        for name, _ in ROUND_FKS:
            batch.drop_constraint(name, type_="foreignkey")
    if op.get_bind().dialect.name == "postgresql":  # SQLite's JSON is text either way
        op.alter_column(
            "step_results",
            "evidence",
            type_=sa.JSON(),
            existing_type=postgresql.JSONB(astext_type=sa.Text()),
            existing_nullable=False,
            postgresql_using="evidence::json",
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "step_results",
            "evidence",
            type_=postgresql.JSONB(astext_type=sa.Text()),
            existing_type=sa.JSON(),
            existing_nullable=False,
            postgresql_using="evidence::jsonb",
        )
    with op.batch_alter_table("rounds") as batch:
        for name, parent in ROUND_FKS:
            column = name.removeprefix("fk_rounds_").removesuffix(f"_{parent}")
            batch.create_foreign_key(name, parent, [column], ["id"])
    with op.batch_alter_table("step_results") as batch:
        batch.create_foreign_key(STEP_ROUND_FK, "rounds", ["round_id"], ["id"], ondelete="CASCADE")
