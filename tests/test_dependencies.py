"""The declared dependencies are the imported ones.

`service/egresswatch` imports exactly what `[project] dependencies` declares (no more: an
undeclared import breaks a fresh install; no less: a declared, unused package is weight and
attack surface for nothing). The tests and benchmarks import only what the package or the `test`
extra declares. Imports are read from the source with `ast`, so a lazy import inside a function
counts too, and mapped to distributions through the installed metadata.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterable
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "service" / "egresswatch"
# Shipped in the package as egresswatch.migrations (pyproject.toml maps it).
MIGRATIONS = ROOT / "migrations"

# Database drivers are never imported by name: SQLAlchemy loads them from the URL's dialect.
LOADED_BY_URL = {"aiosqlite": "sqlite+aiosqlite", "asyncpg": "postgresql+asyncpg"}


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def _declared(requirements: Iterable[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def _runtime_declared() -> set[str]:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    return _declared(project["dependencies"])


def _test_declared() -> set[str]:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    return _declared(project["optional-dependencies"]["test"])


def _top_level_imports(folder: Path) -> set[str]:
    """Every absolute import's first component in the .py files under `folder`."""
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names


def _distributions(modules: set[str], own: set[str]) -> dict[str, str]:
    """Third-party modules mapped to the (canonical) distribution that provides each."""
    provided_by = packages_distributions()
    found: dict[str, str] = {}
    for module in sorted(modules - set(sys.stdlib_module_names) - own - {"__future__"}):
        assert module in provided_by, f"{module} is imported but no installed package provides it"
        found[module] = canonicalize_name(provided_by[module][0])
    return found


def test_the_package_imports_exactly_what_it_declares() -> None:
    modules = _top_level_imports(PACKAGE) | _top_level_imports(MIGRATIONS)
    imported = set(_distributions(modules, own={"egresswatch"}).values())
    imported |= set(LOADED_BY_URL)
    declared = _runtime_declared()
    assert imported - declared == set(), "imported but not declared in [project] dependencies"
    assert declared - imported == set(), "declared in [project] dependencies but never imported"


def test_the_drivers_loaded_by_url_are_the_ones_the_package_names() -> None:
    source = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py"))
    for module, dialect in LOADED_BY_URL.items():
        assert dialect in source, f"{module} is declared for {dialect}, which nothing uses"
        dbapi = make_url(f"{dialect}://").get_dialect().import_dbapi()
        assert dbapi is not None


def test_tests_and_benchmarks_import_only_declared_packages() -> None:
    modules = _top_level_imports(ROOT / "tests") | _top_level_imports(ROOT / "benchmarks")
    # The benchmarks import their sibling scripts by name (they run as `python benchmarks/X.py`).
    siblings = {path.stem for path in (ROOT / "benchmarks").glob("*.py")}
    imported = set(_distributions(modules, own={"egresswatch", "tests", *siblings}).values())
    # packaging comes with pytest, which the test extra pins; it is not worth declaring twice.
    undeclared = imported - _runtime_declared() - _test_declared() - {"packaging"}
    assert undeclared == set(), "tests import packages the test extra does not declare"


def test_a_missing_declaration_is_caught(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text("import yaml\nfrom dnslib import DNSRecord\nimport json\n")
    found = _distributions(_top_level_imports(tmp_path), own=set())
    assert found == {"yaml": "pyyaml", "dnslib": "dnslib"}
