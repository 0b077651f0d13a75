"""Database fixtures: every test gets its own database, SQLite and PostgreSQL.

Import the fixture functions a module uses (each is named `<fixture>_fixture`, so the import
does not clash with the test's argument):

    from tests.support.databases import db_url_fixture, store_fixture  # noqa: F401

- `db_url`: the URL of an EMPTY database (for migration tests);
- `migrated_engine`: an AsyncEngine on a database already at the newest revision;
- `store`: a Store on such a database.

Each is parametrized over "sqlite" (a file in tmp_path) and "postgresql" (a fresh database on
the server named by EGRESSWATCH_TEST_PG_URL, dropped afterwards). Migrated databases are copied
from a template migrated once per session. Without EGRESSWATCH_TEST_PG_URL the PostgreSQL half
skips and says how to start a server; with CI=true it fails instead, so CI cannot pass by
skipping.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.storage import Store, make_engine, upgrade

KINDS = ["sqlite", "postgresql"]
PG_URL_VARIABLE = "EGRESSWATCH_TEST_PG_URL"
HOW_TO_START = (
    f'start one with: eval "export $(bash .ci/start-postgres.sh)" (sets {PG_URL_VARIABLE})'
)


def pg_server_url() -> URL:
    """The PostgreSQL URL from the environment; skips (fails on CI) when there is none."""
    text = os.environ.get(PG_URL_VARIABLE, "").strip()
    if not text:
        message = f"{PG_URL_VARIABLE} is not set: no PostgreSQL to test against; {HOW_TO_START}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return make_url(text)


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(url: URL, statement: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def create_pg_database(server: URL) -> URL:
    """Create an empty database next to `server`'s and return its URL."""
    name = f"egresswatch_t_{secrets.token_hex(6)}"
    try:
        await _admin(server, f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as error:
        message = f"cannot create a test database on {server!r}: {error}; {HOW_TO_START}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return server.set(database=name)


async def drop_pg_database(server: URL, database: str) -> None:
    await _admin(server, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def sqlite_url(directory: Path) -> URL:
    return make_url(f"sqlite+aiosqlite:///{directory / 'egresswatch.db'}")


@pytest.fixture(name="db_url", params=KINDS)
async def db_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[URL]:
    """The URL of an empty database of the parametrized kind, private to this test."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    server = pg_server_url()
    url = await create_pg_database(server)
    try:
        yield url
    finally:
        assert url.database is not None
        await drop_pg_database(server, url.database)


@asynccontextmanager
async def migrated(url: URL) -> AsyncIterator[AsyncEngine]:
    """An engine on `url` after `upgrade` to head, disposed on exit."""
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


class Templates:
    """Databases migrated once per test session and copied for each test that needs one:
    a file copy for SQLite, CREATE DATABASE ... TEMPLATE for PostgreSQL (much faster than
    running the migrations every time)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._sqlite: Path | None = None
        self._postgresql: dict[str, tuple[URL, str]] = {}

    async def sqlite(self, directory: Path) -> URL:
        if self._sqlite is None:
            await asyncio.to_thread(upgrade, sqlite_url(self._directory))
            self._sqlite = self._directory / "egresswatch.db"
        shutil.copyfile(self._sqlite, directory / "egresswatch.db")
        return sqlite_url(directory)

    async def postgresql(self, server: URL) -> URL:
        key = server.render_as_string(hide_password=False)
        if key not in self._postgresql:
            template = await create_pg_database(server)
            await asyncio.to_thread(upgrade, template)
            assert template.database is not None
            self._postgresql[key] = (server, template.database)
        name = f"egresswatch_t_{secrets.token_hex(6)}"
        await _admin(server, f'CREATE DATABASE "{name}" TEMPLATE "{self._postgresql[key][1]}"')
        return server.set(database=name)

    def close(self) -> None:
        async def drop_all() -> None:
            for server, name in self._postgresql.values():
                await drop_pg_database(server, name)

        if self._postgresql:
            # Session teardown: run the drops on a loop of their own.
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, drop_all()).result()


_TEMPLATES = pytest.StashKey[Templates]()


def _templates(request: pytest.FixtureRequest) -> Templates:
    config = request.config
    if _TEMPLATES not in config.stash:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        config.stash[_TEMPLATES] = Templates(factory.mktemp("egresswatch-templates"))
        config.add_cleanup(config.stash[_TEMPLATES].close)
    return config.stash[_TEMPLATES]


@asynccontextmanager
async def migrated_database(request: pytest.FixtureRequest, directory: Path) -> AsyncIterator[URL]:
    """A fresh database of kind `request.param`, already at head, private to the test."""
    templates = _templates(request)
    if request.param == "sqlite":
        yield await templates.sqlite(directory)
        return
    server = pg_server_url()
    url = await templates.postgresql(server)
    try:
        yield url
    finally:
        assert url.database is not None
        await drop_pg_database(server, url.database)


# Parametrized themselves (not through `db_url`), so one import per fixture is all a module
# needs; a test asking for both `db_url` and one of these gets two databases of each kind.


@pytest.fixture(name="migrated_engine", params=KINDS)
async def migrated_engine_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh database at the newest revision."""
    async with migrated_database(request, tmp_path) as url:
        engine = make_engine(url)
        try:
            yield engine
        finally:
            await engine.dispose()


@pytest.fixture(name="store", params=KINDS)
async def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A Store on a fresh database at the newest revision."""
    async with migrated_database(request, tmp_path) as url:
        engine = make_engine(url)
        try:
            yield Store(engine)
        finally:
            await engine.dispose()
