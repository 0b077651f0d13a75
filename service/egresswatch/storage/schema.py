"""Engines, and the schema's state and migrations, for a database URL.

The schema exists only through the Alembic migrations: the top-level `migrations/` folder of
the source tree, shipped inside the package as `egresswatch.migrations` (pyproject.toml maps
it), so an installed egresswatch can migrate its database without an alembic.ini:
`alembic_config(url)` builds the configuration in code, `migrations_dir()` finds the scripts.

`upgrade` and `downgrade` are synchronous (Alembic is) and run their own event loop for the
async drivers: call them from a thread (`await asyncio.to_thread(upgrade, url)`), not from a
running event loop.

`ensure_schema` is the check a service makes before it uses a database: refuse one that is
unreachable, not migrated, or newer than this code, with what to run (or migrate it). A
database already at the newest revision is recognised without Alembic (the scripts' revision
ids read as text, the version table with one query): Alembic, Mako and Pygments are 11 MiB a
long-running process then never loads (docs/performance.md, "How cost grows with targets").
"""

from __future__ import annotations

import ast
import asyncio
import importlib.resources
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from egresswatch.jsonrecord import json_text

if TYPE_CHECKING:  # Alembic is imported where it runs (see the module docstring)
    from alembic.config import Config

log = logging.getLogger(__name__)

# Seconds a SQLite connection waits for another writer's lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 5000


def redact(url: str | URL) -> str:
    """The URL as text with its password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


# Plain URLs name the sync drivers; egresswatch is async throughout.
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def normalize_url(url: str | URL) -> URL:
    """The URL with its async driver: `sqlite://` and `postgresql://` get aiosqlite and asyncpg."""
    parsed = make_url(url)
    return parsed.set(drivername=_ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername))


def make_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An AsyncEngine for `sqlite+aiosqlite://` or `postgresql+asyncpg://` URLs.

    SQLite: the parent directory of a file database is created (a relative path stays relative
    to the working directory, as SQLAlchemy reads it), and every connection uses WAL (readers do
    not block the writer), synchronous=NORMAL (safe with WAL; a power cut may lose the last
    commits, not the file) and a busy timeout (wait for the other writer's lock, do not fail).
    `sqlite://` and `postgresql://` get their async drivers. Extra keyword arguments go to
    `create_async_engine`.
    """
    parsed = normalize_url(url)
    # Evidence's text (Record.to_json_text) and every other JSON column: one encoding.
    kwargs.setdefault("json_serializer", json_text)
    # A pooled connection may have died with a database restart: test it before use.
    kwargs.setdefault("pool_pre_ping", True)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed, **kwargs)

    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or "mode=memory" in database
    if not in_memory and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(parsed, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    return engine


def migrations_dir() -> Path:
    """The Alembic script directory of this egresswatch: `egresswatch.migrations`, which is the
    top-level `migrations/` in a source checkout (an editable install maps it) and
    `egresswatch/migrations/` inside an installed wheel.

    Raises RuntimeError when the scripts are not plain files (a zipped install), which Alembic
    cannot read.
    """
    # By name, not by import: storage does not import the scripts, Alembic loads them.
    found = importlib.resources.files("egresswatch.migrations")
    if not isinstance(found, Path) or not (found / "env.py").is_file():
        raise RuntimeError(f"the migrations are not a folder of files: {found}")
    return found


def alembic_config(url: str | URL | None = None, script_location: Path | None = None) -> Config:
    """An Alembic Config for the packaged migrations (or `script_location`'s), without an ini.

    The URL travels in `config.attributes["url"]` (not the ini options, which would interpolate
    a `%` in a password); the migrations' env.py reads it from there.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location or migrations_dir()))
    if url is not None:
        config.attributes["url"] = make_url(url).render_as_string(hide_password=False)
    return config


def _check_no_running_loop(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} runs its own event loop: call it via asyncio.to_thread({what}, …)")


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at `url` up to `revision` (default: the newest). Synchronous."""
    _check_no_running_loop("upgrade")
    from alembic import command

    log.info("upgrading database %s to %s", redact(url), revision)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL, revision: str) -> None:
    """Migrate the database at `url` down to `revision` (`base` removes everything)."""
    _check_no_running_loop("downgrade")
    from alembic import command

    log.info("downgrading database %s to %s", redact(url), revision)
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    """The newest revision this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError(f"no migrations found in {migrations_dir()}")
    return head


class SchemaStatus(StrEnum):
    MISSING = "missing"  # no egresswatch schema: an empty or never migrated database
    BEHIND = "behind"  # an older revision: run the upgrade
    CURRENT = "current"
    AHEAD = "ahead"  # a revision this code does not know: the database is newer than the code


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands against this code's migrations."""

    status: SchemaStatus
    current: str | None  # the database's revision; None when missing
    head: str  # the newest revision this code knows

    @property
    def ok(self) -> bool:
        return self.status is SchemaStatus.CURRENT

    def message(self, url: str | URL | None = None) -> str:
        """One sentence for a person: what is wrong and the command that fixes it."""
        db = redact(url) if url is not None else "URL"
        fix = f"run `egresswatch db upgrade --db {db}`"
        match self.status:
            case SchemaStatus.CURRENT:
                return f"the database schema is current (revision {self.head})"
            case SchemaStatus.MISSING:
                return f"the database has no egresswatch schema yet: {fix}"
            case SchemaStatus.BEHIND:
                return (
                    f"the database schema is at revision {self.current}, this egresswatch needs"
                    f" {self.head}: {fix}"
                )
            case SchemaStatus.AHEAD:
                return (
                    f"the database schema is at revision {self.current}, which this egresswatch"
                    f" (newest revision {self.head}) does not know: it was migrated by a newer"
                    " egresswatch; run that version, or downgrade the database with it"
                )


async def schema_state(engine: AsyncEngine, config: Config | None = None) -> SchemaState:
    """Compare the database's Alembic revision with the packaged migrations (or `config`'s).

    Reads only. MISSING also covers a database holding other tables but no egresswatch revision.
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(config or alembic_config())
    head = script.get_current_head()
    assert head is not None
    async with engine.connect() as connection:
        current_heads = await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_heads()
        )
    if not current_heads:
        return SchemaState(SchemaStatus.MISSING, None, head)
    current = ",".join(sorted(current_heads))
    if current_heads == (head,):
        return SchemaState(SchemaStatus.CURRENT, current, head)
    known = {rev.revision for rev in script.walk_revisions()}
    if all(rev in known for rev in current_heads):
        return SchemaState(SchemaStatus.BEHIND, current, head)
    return SchemaState(SchemaStatus.AHEAD, current, head)


class DatabaseNotReady(Exception):
    """The database cannot be used as it is; the message says why and what to run."""


async def ensure_schema(engine: AsyncEngine, url: str | URL, *, migrate: bool = False) -> None:
    """Return once the database at `url` (reached through `engine`) has the current schema.

    Unreachable, missing, behind or ahead: the engine is disposed and DatabaseNotReady says what
    is wrong and the command that fixes it. With `migrate`, a missing or older schema is migrated
    to the newest revision instead (in a thread: Alembic runs its own event loop); a newer one
    never is, since this code cannot know what it holds.
    """
    try:
        if await _is_current(engine):
            return
        state = await schema_state(engine)
    except Exception as exc:
        await engine.dispose()
        raise DatabaseNotReady(f"cannot reach the database {redact(url)}: {exc}") from None
    if state.ok:
        return
    migratable = state.status in (SchemaStatus.MISSING, SchemaStatus.BEHIND)
    if not (migrate and migratable):
        await engine.dispose()
        raise DatabaseNotReady(
            state.message(url) + (" (or start with --migrate)" if migratable else "")
        )
    log.info("migrating the database", extra={"from": state.current, "to": state.head})
    await asyncio.to_thread(upgrade, url)


async def _is_current(engine: AsyncEngine) -> bool:
    """Whether the database holds exactly the packaged migrations' head, read without Alembic
    (its version table, `alembic_version`, the default of migrations/env.py). False whenever
    it is not plainly so (no version table, another revision, no single head): Alembic then
    says what the database holds. Raises the database's errors."""
    head = packaged_head()
    if head is None:
        return False
    async with engine.connect() as connection:
        if not await connection.run_sync(lambda sync: inspect(sync).has_table("alembic_version")):
            return False
        rows = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
    return [row[0] for row in rows] == [head]


def packaged_head(directory: Path | None = None) -> str | None:
    """The head of the migrations in `directory` (default: the packaged versions/), from the
    scripts' `revision` and `down_revision` read as text, not run: the one revision no other
    one follows. None when that is not plain (a merge, a computed id, several heads); the
    callers then ask Alembic. tests/test_migrations.py checks it against Alembic's head."""
    revisions: dict[str, object] = {}
    for script in sorted((directory or migrations_dir() / "versions").glob("*.py")):
        ids = _revision_ids(ast.parse(script.read_text()))
        if "revision" not in ids:
            continue  # not a migration (an __init__.py)
        if not isinstance(ids["revision"], str):
            return None
        revisions[ids["revision"]] = ids.get("down_revision")
    followed = set(revisions.values())
    if not all(down is None or isinstance(down, str) for down in followed):
        return None
    heads = [revision for revision in revisions if revision not in followed]
    return heads[0] if len(heads) == 1 else None


def _revision_ids(module: ast.Module) -> dict[str, object]:
    """The module-level `revision` and `down_revision`: their values when constants, else
    their expressions (which no caller takes for an id)."""
    found: dict[str, object] = {}
    for node in module.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name, value = node.target.id, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            name, value = (target.id if isinstance(target, ast.Name) else ""), node.value
        else:
            continue
        if name in ("revision", "down_revision") and value is not None:
            found[name] = value.value if isinstance(value, ast.Constant) else value
    return found
