"""The layers hold: `lint-imports` keeps every contract in pyproject.toml's [tool.importlinter].

The contracts (DESIGN.md §5): the model and addresses at the bottom; settings above them alone;
probes and storage unaware of each other and of the config; the agent never importing storage
or the controller; the controller never importing probes; the kubernetes client in kube/. CI runs
`lint-imports` too; this test makes the README's test command check them as well.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_import_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with (ROOT / "pyproject.toml").open("rb") as file:
        contracts = tomllib.load(file)["tool"]["importlinter"]["contracts"]
    # Every contract was checked, none left out by a configuration mistake.
    assert f"Contracts: {len(contracts)} kept, 0 broken." in result.stdout
