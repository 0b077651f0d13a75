"""DESIGN.md §5: pure rules import no I/O library. Checked in a fresh interpreter, so that what
the rest of the test session imported does not count."""

from __future__ import annotations

import json
import subprocess
import sys

IO_LIBRARIES = frozenset(
    {"asyncio", "socket", "sqlalchemy", "aiohttp", "prometheus_client", "pydantic", "kubernetes"}
)


def io_imported(*modules: str) -> list[str]:
    """The I/O libraries that importing `modules` pulls in, sorted (empty: pure)."""
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules)
    code += f"print(sorted(set({sorted(IO_LIBRARIES)!r}) & set(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    found: list[str] = json.loads(out.stdout.strip().replace("'", '"'))
    return found
