"""What an agent's RSS is made of before it runs a round: VmRSS, anonymous and file-backed,
after each import in the order `egresswatch agent` loads them (not a test).

Each step is measured in one fresh interpreter, importing the modules of the steps before it
too, so a row is what that library adds on top of the ones above it. File-backed pages are the
interpreter's and the extensions' shared libraries; anonymous ones are the heap. The last rows
are what an agent no longer loads, for comparison, each on top of all the agent's rows: aiohttp
(its HTTP is h11 on asyncio streams), pydantic
(its row includes building one model: pydantic loads its schema machinery at the first one; the
plan is read by egresswatch/wire.py) and cryptography (loaded only to read a certificate that
failed verification; a verified session's names come from ssl). Compare with the running agent:
benchmarks/agent_footprint.py.

    python benchmarks/agent_imports.py
"""

from __future__ import annotations

import json
import subprocess
import sys

# (row, code run after the rows above it), in the agent's start order.
STEPS = (
    ("Python alone", ""),
    ("asyncio, ssl", "import asyncio, ssl"),
    # The agent's HTTP (agent/http_client.py, agent/listener.py); it was aiohttp, +15.9 MiB.
    ("h11 (the agent's HTTP client and listener)", "import h11"),
    ("prometheus_client", "import prometheus_client"),
    ("dnslib", "import dnslib"),
    ("egresswatch's agent modules", "import egresswatch.cli, egresswatch.agent.service"),
)

# Not in an agent's start (module docstring): each measured on top of all of STEPS.
NOT_LOADED = (
    ("not loaded: aiohttp, client and server", "import aiohttp, aiohttp.web"),
    (
        "not loaded: pydantic, and its first model",
        "import pydantic\nclass M(pydantic.BaseModel): x: int",
    ),
    ("only after a failed verification: cryptography", "import cryptography.x509"),
)

REPORT = """
import json
fields = {}
for line in open('/proc/self/status'):
    key, _, value = line.partition(':')
    if key in ('VmRSS', 'RssAnon', 'RssFile'):
        fields[key] = int(value.split()[0]) / 1024
print(json.dumps(fields))
"""


def measure(codes: list[str]) -> dict[str, float]:
    code = "\n".join(codes) + REPORT
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, float] = json.loads(found.stdout)
    return result


def main() -> None:
    print(f"{'after importing':52} {'VmRSS':>7} {'added':>6} {'anon':>6} {'file':>6}  (MiB)")
    before = 0.0
    for index, (row, _) in enumerate(STEPS):
        before = _row(row, [code for _, code in STEPS[: index + 1]], before if index else None)
    agent = [code for _, code in STEPS]
    for row, code in NOT_LOADED:
        _row(row, [*agent, code], before)


def _row(row: str, codes: list[str], before: float | None) -> float:
    """Prints one row (`added` over `before`, when given); its VmRSS."""
    fields = measure(codes)
    rss = fields["VmRSS"]
    added = f"{rss - before:+6.1f}" if before is not None else ""
    print(f"{row:52} {rss:7.1f} {added:>6} {fields['RssAnon']:6.1f} {fields['RssFile']:6.1f}")
    return rss


if __name__ == "__main__":
    main()
