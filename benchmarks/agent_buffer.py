"""The agent's buffer: what a buffered round really costs in memory, and the spill file's speed
(not a test).

    python benchmarks/agent_buffer.py [--rounds 200000] [--steps 6] [--spill-dir DIR]

Encodes rounds as the agent does (agent/encode.py; the step evidence of benchmarks/ingest.py,
about what agents send), then measures with tracemalloc:

- before: the rounds held as the sink held them until now (a dataclass per round in a deque,
  up to 200,000 of them);
- now: agent/buffer.py's Round, against the estimate `round_cost` counts against --buffer-mib
  (the document's length plus ROUND_OVERHEAD_BYTES); the estimate must not be below the real
  cost, or the bound would not hold;

then appends the rounds to a spill file in batches of 200 with an fsync each, and replays the
file as an agent restart does.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import tracemalloc
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ingest import make_rounds

from egresswatch.agent.buffer import ROUND_OVERHEAD_BYTES, Round, round_cost
from egresswatch.agent.encode import encode_round
from egresswatch.agent.sink_types import DEFAULT_BUFFER_MIB, MIB
from egresswatch.agent.spill import SpillFile

BATCH = 200


@dataclass(frozen=True)
class _OldRound:  # as agent/sink.py held a round before the buffer was bounded in bytes
    target: str
    document: bytes


def _held_bytes(build: object) -> tuple[int, object]:
    """Bytes allocated (and still held) while `build()` runs."""
    assert callable(build)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--spill-dir", type=Path, default=None)
    args = parser.parse_args()

    documents = [encode_round(r) for r in make_rounds(args.rounds, args.steps)]
    targets = sorted({f"https://target-{i % 25}.example.test/" for i in range(25)})
    mean_document = sum(map(len, documents)) / len(documents)
    print(f"{args.rounds} rounds of {args.steps} steps: documents of {mean_document:.0f} B")

    # The documents are made above and copied here, so that each measure counts its own bytes.
    def copy(i: int) -> tuple[str, bytes]:
        return targets[i % 25], bytes(memoryview(documents[i]))

    old, _ = _held_bytes(lambda: deque(_OldRound(*copy(i)) for i in range(len(documents))))
    new, held = _held_bytes(lambda: deque(Round(*copy(i)) for i in range(len(documents))))
    assert isinstance(held, deque)
    estimate = sum(round_cost(r) for r in held)
    print(
        f"before: {old / args.rounds:.0f} B a round, {old / MIB:.0f} MiB for {args.rounds} "
        f"(overhead {old / args.rounds - mean_document:.0f} B)"
    )
    print(
        f"now:    {new / args.rounds:.0f} B a round "
        f"(overhead {new / args.rounds - mean_document:.0f} B), counted as "
        f"{estimate / args.rounds:.0f} B (ROUND_OVERHEAD_BYTES {ROUND_OVERHEAD_BYTES}): "
        f"estimate/real {estimate / new:.3f}"
    )
    fit = DEFAULT_BUFFER_MIB * MIB // (estimate / args.rounds)
    print(
        f"the default --buffer-mib {DEFAULT_BUFFER_MIB} holds {fit:.0f} rounds in memory "
        f"({DEFAULT_BUFFER_MIB} MiB instead of {old / MIB:.0f} MiB for {args.rounds})"
    )
    del held
    with tempfile.TemporaryDirectory(dir=args.spill_dir) as directory:
        asyncio.run(_spill(Path(directory) / "bench.spill", documents, targets))


async def _spill(path: Path, documents: list[bytes], targets: list[str]) -> None:
    spill = SpillFile(path, source="bench", source_kind="node", max_bytes=1 << 40)
    spill.open()
    started = time.perf_counter()
    for n, start in enumerate(range(0, len(documents), BATCH)):
        batch = [(targets[i % 25], documents[i]) for i in range(start, start + BATCH)]
        spill.append(f"b{n}", batch)
        await spill.sync()  # as the sink does while the controller is away
    written = time.perf_counter() - started
    size = spill.size_bytes
    spill.close()
    started = time.perf_counter()
    again = SpillFile(path, source="bench", source_kind="node", max_bytes=1 << 40)
    again.open()
    replayed = time.perf_counter() - started
    again.close()
    batches = len(documents) // BATCH
    print(
        f"spill: {size / MIB:.0f} MiB in {batches} batches of {BATCH}, fsync each: "
        f"{written:.2f} s ({written / batches * 1000:.1f} ms a batch); replayed in "
        f"{replayed:.2f} s"
    )


if __name__ == "__main__":
    main()
