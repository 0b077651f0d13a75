"""The wheel as a user gets it: built, installed with the locked run requirements into a fresh
virtualenv, and `egresswatch db upgrade` migrating a database from there.

Slow on purpose (about 30 s: a wheel build in an isolated build environment, a new virtualenv
and ~30 packages from the machine's local index), and marked `slow` so it is clear why; it
needs no network beyond that index. The migrations live in the top-level `migrations/` and
reach the wheel through the package-dir mapping in pyproject.toml: this is the test that the
mapping, the package list and `migrations_dir()` hold together outside the source tree.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from egresswatch.storage.schema import head_revision
from egresswatch.storage.tables import metadata

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    """Run a command with the machine's environment minus anything that would let the source
    tree leak into the installed one; fail with its output when it fails."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        args, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


# What a build never reads; a stale build/ would even end up in the wheel (setuptools reuses it).
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "*.db", "*.db-*"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel, built once from a clean copy of this checkout (pip, with the build backend
    pyproject.toml names, in pip's isolated build environment)."""
    source = tmp_path_factory.mktemp("source") / "egresswatch"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    out = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)], out)
    print(f"wheel built in {time.monotonic() - started:.1f} s")
    (found,) = out.glob("egresswatch-*.whl")
    yield found


def expected_files() -> set[str]:
    """What the wheel must hold: every module of the package and every migration, where an
    installed egresswatch looks for them."""
    package = ROOT / "service"
    files = {p.relative_to(package).as_posix() for p in (package / "egresswatch").rglob("*.py")}
    files |= {
        "egresswatch/migrations/" + p.relative_to(ROOT / "migrations").as_posix()
        for p in (ROOT / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    return files | {"egresswatch/py.typed"}


def test_the_wheel_ships_every_module_and_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = {n for n in archive.namelist() if ".dist-info/" not in n}
    missing = expected_files() - names
    assert missing == set(), "not in the wheel: add the package to [tool.setuptools] packages"
    # The migrations are egresswatch's: no top-level `migrations` package in site-packages.
    assert {n.partition("/")[0] for n in names} == {"egresswatch"}
    assert "egresswatch/migrations/versions/0001_initial_schema.py" in names


def test_the_installed_wheel_migrates_a_database(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    started = time.monotonic()
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps"]
    run([*pip, "-r", str(ROOT / "requirements" / "run.txt"), str(wheel)], tmp_path)
    run([str(venv / "bin" / "python"), "-m", "pip", "check"], tmp_path)
    print(f"virtualenv with the wheel and the run lock in {time.monotonic() - started:.1f} s")

    # Its scripts come from the virtualenv, not from this checkout.
    where = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from egresswatch.storage.schema import migrations_dir; print(migrations_dir())",
        ],
        tmp_path,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where

    # `egresswatch bench` runs from the wheel on the run lock alone: no test dependency (its
    # CA is made with cryptography, not trustme), its lab and measures importable.
    bench = (
        "import importlib.util, egresswatch.bench.run, egresswatch.bench.lab;"
        " print(importlib.util.find_spec('trustme'))"
    )
    found = run([str(venv / "bin" / "python"), "-c", bench], tmp_path).stdout.strip()
    assert found == "None", found

    database = tmp_path / "x.db"
    upgrade = [str(venv / "bin" / "egresswatch"), "db", "upgrade"]
    run([*upgrade, "--db", f"sqlite+aiosqlite:///{database}"], tmp_path)

    with sqlite3.connect(database) as connection:
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert tables == set(metadata.tables) | {"alembic_version"}
    assert revision == head_revision()
