"""Alembic environment for egresswatch: async drivers, SQLite and PostgreSQL, no ini needed.

The database URL comes from, in order: `config.attributes["url"]` (how egresswatch itself runs
migrations, see `egresswatch.storage.schema.alembic_config`), `alembic -x db=URL ...`, the
environment variable EGRESSWATCH_DB_URL, then `sqlalchemy.url` in alembic.ini. A caller that
already holds a connection may pass it as `config.attributes["connection"]` (a sync Connection,
e.g. from `AsyncConnection.run_sync`).

`render_as_batch=True` makes autogenerate write ALTERs as batch operations, which SQLite needs
(it recreates the table) and PostgreSQL runs as plain ALTERs: one set of migrations for both.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from egresswatch.storage.schema import make_engine, normalize_url
from egresswatch.storage.tables import UTCDateTime, metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata


def database_url() -> str:
    url = (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("db")
        or os.environ.get("EGRESSWATCH_DB_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("no database URL: pass -x db=URL or set EGRESSWATCH_DB_URL")
    return normalize_url(url).render_as_string(hide_password=False)


def render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations must not import code that changes later: write our type as what it stores.
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        render_item=render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Print the SQL instead of running it (`alembic upgrade head --sql`)."""
    configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = make_engine(database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
