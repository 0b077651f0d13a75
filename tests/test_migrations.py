"""Migrations on SQLite and PostgreSQL: up, down, up again; no drift from tables.py; state."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.model import RoundResult
from egresswatch.storage import (
    DatabaseNotReady,
    SchemaState,
    SchemaStatus,
    Store,
    alembic_config,
    downgrade,
    ensure_schema,
    make_engine,
    normalize_url,
    schema_state,
    upgrade,
)
from egresswatch.storage.rows import read_rounds
from egresswatch.storage.schema import head_revision, migrations_dir, packaged_head
from egresswatch.storage.tables import metadata
from tests.support.databases import db_url_fixture  # noqa: F401
from tests.test_ingest_copy import awkward_rounds

TABLES_0001 = {
    "sources",
    "targets",
    "ingest_batches",
    "rounds",
    "step_results",
    "rollups",
    "rollup_pending",
}
TABLES_0004 = TABLES_0001 | {"changes", "incidents", "step_states"}
TABLES = TABLES_0004 | {"cluster_changes", "incident_cluster_changes"}


async def table_names(url: URL) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(db_url: URL) -> None:
    assert await table_names(db_url) == set()
    await asyncio.to_thread(upgrade, db_url)
    assert await table_names(db_url) == TABLES | {"alembic_version"}
    await asyncio.to_thread(downgrade, db_url, "0001")
    assert await table_names(db_url) == TABLES_0001 | {"alembic_version"}
    await asyncio.to_thread(downgrade, db_url, "base")
    assert await table_names(db_url) == {"alembic_version"}
    await asyncio.to_thread(upgrade, db_url, "head")
    assert await table_names(db_url) == TABLES | {"alembic_version"}


async def test_0005_cluster_changes_up_and_down(db_url: URL) -> None:
    """0005 adds the cluster changes and their incident links; down to 0004 removes both and
    keeps the rest (the incidents among them)."""
    await asyncio.to_thread(upgrade, db_url, "0005")
    assert await table_names(db_url) == TABLES | {"alembic_version"}
    await asyncio.to_thread(downgrade, db_url, "0004")
    assert await table_names(db_url) == TABLES_0004 | {"alembic_version"}
    await asyncio.to_thread(upgrade, db_url, "0005")
    assert await table_names(db_url) == TABLES | {"alembic_version"}


async def _all_rounds(engine: AsyncEngine) -> list[RoundResult]:
    async with engine.connect() as conn:
        return await read_rounds(conn)


def _foreign_keys(sync: Connection, table: str) -> list[str]:
    return [fk["referred_table"] for fk in sa.inspect(sync).get_foreign_keys(table)]


async def test_0006_drops_the_ingest_foreign_keys_and_keeps_every_round(db_url: URL) -> None:
    """0006 drops the keys of rounds and step_results (and makes evidence `json` on
    PostgreSQL); the rounds stored before read back the same after the upgrade and after a
    downgrade, which puts the keys back."""
    await asyncio.to_thread(upgrade, db_url, "0005")
    engine = make_engine(db_url)
    try:
        rounds = awkward_rounds()
        await Store(engine).save_rounds(rounds)
        before = await _all_rounds(engine)
        assert len(before) == len(rounds)
        await engine.dispose()  # batch mode recreates the tables: no connection may hold them

        await asyncio.to_thread(upgrade, db_url, "0006")
        async with engine.connect() as conn:
            assert await conn.run_sync(_foreign_keys, "step_results") == []
            assert await conn.run_sync(_foreign_keys, "rounds") == []
        assert await _all_rounds(engine) == before
        await engine.dispose()

        await asyncio.to_thread(downgrade, db_url, "0005")
        async with engine.connect() as conn:
            assert await conn.run_sync(_foreign_keys, "step_results") == ["rounds"]
            assert sorted(await conn.run_sync(_foreign_keys, "rounds")) == ["sources", "targets"]
        assert await _all_rounds(engine) == before
    finally:
        await engine.dispose()


async def test_migrations_match_the_tables_module(db_url: URL) -> None:
    """What `alembic revision --autogenerate` would see: no difference at all."""
    await asyncio.to_thread(upgrade, db_url)

    def compare(sync: Connection) -> list[object]:
        context = MigrationContext.configure(sync, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(compare) == []
    finally:
        await engine.dispose()


def _migrations_with_a_newer_revision(directory: Path) -> Path:
    """A copy of the packaged migrations plus a revision 9999 on top (a "newer egresswatch")."""
    scripts = directory / "migrations"
    shutil.copytree(migrations_dir(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_newer.py").write_text(
        f'''"""A revision from the future."""

import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{head_revision()}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("future", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("future")
'''
    )
    return scripts


async def test_schema_state_missing_behind_current_ahead(db_url: URL, tmp_path: Path) -> None:
    newer = alembic_config(db_url, script_location=_migrations_with_a_newer_revision(tmp_path))
    head = head_revision()
    engine = make_engine(db_url)
    try:
        state = await schema_state(engine)
        assert (state.status, state.current, state.head) == (SchemaStatus.MISSING, None, head)
        assert "egresswatch db upgrade --db" in state.message(db_url)

        await asyncio.to_thread(upgrade, db_url)
        state = await schema_state(engine)
        assert (state.status, state.current) == (SchemaStatus.CURRENT, head)
        assert state.ok

        # Seen by a newer egresswatch, this database is behind.
        state = await schema_state(engine, newer)
        assert (state.status, state.current, state.head) == (SchemaStatus.BEHIND, head, "9999")
        assert "needs 9999" in state.message(db_url)

        # Migrated by the newer egresswatch, it is ahead of this one.
        await asyncio.to_thread(command.upgrade, newer, "head")
        state = await schema_state(engine)
        assert (state.status, state.current, state.head) == (SchemaStatus.AHEAD, "9999", head)
        assert "newer egresswatch" in state.message(db_url)
        assert await schema_state(engine, newer) == SchemaState(
            SchemaStatus.CURRENT, "9999", "9999"
        )

        # A revision nobody knows (stamped by hand) is ahead too.
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dcafe'"))
        state = await schema_state(engine)
        assert (state.status, state.current) == (SchemaStatus.AHEAD, "f00dcafe")
    finally:
        await engine.dispose()


def test_the_scripts_are_the_top_level_migrations_folder() -> None:
    """In a checkout (an editable install) the package reads the source folder itself; an
    installed wheel's copy is tests/test_wheel.py's."""
    top_level = Path(__file__).resolve().parent.parent / "migrations"
    assert migrations_dir().resolve() == top_level
    assert any((top_level / "versions").glob(f"{head_revision()}_*.py"))


def test_message_hides_the_password() -> None:
    state = SchemaState(SchemaStatus.MISSING, None, "0001")
    message = state.message("postgresql+asyncpg://ew:s3cret@db.example:5432/ew")
    assert "s3cret" not in message
    assert "egresswatch db upgrade --db postgresql+asyncpg://ew:***@db.example:5432/ew" in message


async def test_upgrade_refuses_to_run_inside_an_event_loop(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"asyncio\.to_thread"):
        upgrade(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")


async def test_sqlite_engine_makes_its_directory_and_uses_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = make_engine("sqlite:///data/nested/egresswatch.db")  # relative, sync-style URL
    try:
        assert engine.url.drivername == "sqlite+aiosqlite"
        async with engine.connect() as conn:
            journal = (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar_one()
            timeout = (await conn.execute(sa.text("PRAGMA busy_timeout"))).scalar_one()
            await conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            await conn.commit()
        assert (journal, timeout) == ("wal", 5000)
        assert (tmp_path / "data" / "nested" / "egresswatch.db").is_file()
    finally:
        await engine.dispose()


def test_plain_urls_get_the_async_drivers() -> None:
    assert normalize_url(make_url("postgresql://u:p@127.0.0.1:1/db")).drivername == (
        "postgresql+asyncpg"
    )
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert normalize_url("postgresql+asyncpg://u@h/db").drivername == "postgresql+asyncpg"


def test_the_head_read_as_text_is_alembics(tmp_path: Path) -> None:
    """ensure_schema recognises a current database without loading Alembic, from the scripts'
    revision ids read as text: they must name the head Alembic names, and step aside (None)
    when the graph is not a plain line."""
    assert packaged_head() == head_revision()
    versions = _migrations_with_a_newer_revision(tmp_path) / "versions"
    assert packaged_head(versions) == "9999"
    (versions / "9998_branch.py").write_text(
        f'revision = "9998"\ndown_revision = "{head_revision()}"\n'
    )
    assert packaged_head(versions) is None  # two heads: Alembic says what the database holds
    (versions / "9998_branch.py").write_text('revision = "9998"\ndown_revision = ("9999", "x")\n')
    assert packaged_head(versions) is None  # a merge


async def test_ensure_schema_refuses_what_the_text_check_does_not_recognise(
    db_url: URL, tmp_path: Path
) -> None:
    """The quick check only ever says "current": a database ahead of this code is still
    refused, and one at the head passes."""
    engine = make_engine(db_url)
    try:
        await asyncio.to_thread(upgrade, db_url)
        await ensure_schema(engine, db_url)  # current: passes
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dcafe'"))
        with pytest.raises(DatabaseNotReady, match="f00dcafe"):
            await ensure_schema(engine, db_url)
    finally:
        await engine.dispose()
