"""The agent's spill file: batches of rounds on disk, in order, until the controller has them.

A FIFO of batches in one append-only file (`--spill-file`; an emptyDir in a cluster, so it
outlives a container restart). Contract of :class:`SpillFile`:

- The file starts with MAGIC and a header frame naming the source (name and kind) that wrote
  it. Opening a file written by another source, or one another process holds open (an
  exclusive flock), raises :class:`SpillError` naming the flag: its rounds are not ours to
  send.
- Then frames: ``<length u32 LE><crc32 u32 LE><payload>``. A payload is a batch
  (``B`` + a JSON line ``{"id", "targets"}`` + one round document per line; round documents
  are JSON, so they hold no raw newline) or an acknowledgement (``A`` + a batch id).
- A batch keeps the id it was written with: after a restart it is sent again under that id,
  and the controller stores an id once per source, so a batch that was delivered but not yet
  acknowledged here is not stored twice.
- :meth:`append` writes (no fsync: :meth:`sync` makes the writes so far durable, from a
  thread). :meth:`first` reads the oldest pending batch; :meth:`ack` marks it delivered. When
  nothing is pending the file is cut back to its header; when acknowledged bytes outweigh the
  pending ones (and pass COMPACT_MIN_BYTES) the pending frames are copied to a new file that
  replaces this one. Nothing pending is ever removed except by the bound below.
- The file holds at most `max_bytes`. An append that does not fit first compacts, then drops
  the oldest pending batches (never the one in flight, `keep_first`) until the pending bytes
  fit in three quarters of the bound (so that a full file drops in steps, not one batch per
  append); a batch that alone does not fit is dropped itself. :meth:`append` returns the
  rounds dropped.
- :meth:`open` replays the file. A torn or corrupt tail (a SIGKILL mid-write, a bad sector)
  is found by the length and checksum: the good prefix is kept, the rest cut off and logged
  once.

All methods but :meth:`sync` are synchronous and meant for the event loop's thread: an append
is one write() of at most a batch (about 0.5 MB) into the page cache.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COMPACT_MIN_BYTES",
    "DEFAULT_SPILL_MIB",
    "MAGIC",
    "SpillError",
    "SpillFile",
    "SpilledBatch",
]

log = logging.getLogger(__name__)

MAGIC = b"EGRESSWATCH-SPILL 1\n"
COMPACT_MIN_BYTES = 1 << 20
DEFAULT_SPILL_MIB = 256
_FRAME = struct.Struct("<II")  # payload length, crc32 of the payload
_BATCH, _ACK = b"B", b"A"


class SpillError(Exception):
    """The spill file cannot be used; the message names the flag and the problem."""


@dataclass(frozen=True)
class SpilledBatch:
    """A batch as written: its id, and each round's target and JSON document, in order."""

    batch_id: str
    rounds: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class _Entry:
    batch_id: str
    offset: int  # of the frame
    size: int  # of the frame, header included
    rounds: int


class SpillFile:
    """One source's spill file; see the module docstring. Call :meth:`open` first."""

    def __init__(
        self,
        path: Path,
        *,
        source: str,
        source_kind: str | None,
        max_bytes: int,
        flag: str = "--spill-file",
    ) -> None:
        self.path = path
        self._owner = {"source": source, "kind": source_kind}
        self.max_bytes = max_bytes
        self._flag = flag
        self._fd = -1
        self._header_size = 0
        self._size = 0  # of the file: where the next frame goes
        self._pending: deque[_Entry] = deque()
        self._pending_bytes = 0
        self._pending_rounds = 0

    # -- what is in it --------------------------------------------------------------------

    @property
    def pending_batches(self) -> int:
        return len(self._pending)

    @property
    def pending_rounds(self) -> int:
        return self._pending_rounds

    @property
    def size_bytes(self) -> int:
        return self._size

    # -- open, close ------------------------------------------------------------------------

    def open(self) -> None:
        """Open or create the file and replay it; SpillError when it is not ours or unusable."""
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise SpillError(f"{self._flag}: cannot open {self.path}: {exc.strerror}") from None
        try:  # two agents appending to one file would interleave their frames
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise SpillError(
                f"{self._flag}: {self.path} is in use by another process: give each agent "
                "its own file"
            ) from None
        if not self._size:
            self._write_header()
            return
        if os.pread(self._fd, len(MAGIC), 0) != MAGIC:
            self.close()
            raise SpillError(f"{self._flag}: {self.path} is not an egresswatch spill file")
        header = self._frame_at(len(MAGIC))
        if header is None:  # killed while the header was written: nothing else can follow
            self._write_header()
            return
        owner, end = header
        self._check_owner(owner)
        self._header_size = end
        self._replay(end)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def sync(self) -> None:
        """Make every write so far durable (fsync, in a thread; the loop goes on meanwhile)."""
        if self._fd < 0:
            return
        fd = os.dup(self._fd)  # a compaction may replace self._fd while the thread runs
        try:
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)

    # -- the queue --------------------------------------------------------------------------

    def append(
        self, batch_id: str, rounds: Sequence[tuple[str, bytes]], *, keep_first: bool = False
    ) -> int:
        """Write a batch after the others; the rounds dropped to make room (see the bound)."""
        head = json.dumps({"id": batch_id, "targets": [t for t, _ in rounds]}).encode()
        payload = b"\n".join((_BATCH + head, *(document for _, document in rounds)))
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        if self._header_size + len(frame) > self.max_bytes:  # could never fit: it goes alone
            return len(rounds)
        dropped = self._make_room(len(frame), keep_first)
        if self._size + len(frame) > self.max_bytes:
            return dropped + len(rounds)
        self._write(frame)
        self._pending.append(_Entry(batch_id, self._size - len(frame), len(frame), len(rounds)))
        self._pending_bytes += len(frame)
        self._pending_rounds += len(rounds)
        return dropped

    def first(self) -> SpilledBatch | None:
        """The oldest pending batch, read from the file; None when nothing is pending."""
        if not self._pending:
            return None
        entry = self._pending[0]
        found = self._frame_at(entry.offset)
        if found is None:  # the file changed under us: a bug or a disk gone bad
            raise SpillError(f"{self._flag}: {self.path}: a frame read back is corrupt")
        return _batch(found[0])

    def ack(self, batch_id: str) -> None:
        """The oldest pending batch was delivered (a no-op when it is not `batch_id`: the
        bound dropped it meanwhile). Cuts the file back when nothing is left pending."""
        if not self._pending or self._pending[0].batch_id != batch_id:
            return
        self._forget_first()
        if not self._pending:
            self._truncate(self._header_size)
            return
        payload = _ACK + batch_id.encode()
        self._write(_FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
        if self._dead_bytes() >= max(COMPACT_MIN_BYTES, self._pending_bytes):
            self._compact()

    # -- inside -----------------------------------------------------------------------------

    def _check_owner(self, payload: bytes) -> None:
        try:
            owner = json.loads(payload)
        except ValueError:
            owner = None
        if owner != self._owner:
            self.close()
            raise SpillError(
                f"{self._flag}: {self.path} belongs to another source ({_describe(owner)}), "
                f"not to this agent ({_describe(self._owner)}); give each agent its own file"
            )

    def _write_header(self) -> None:
        payload = json.dumps(self._owner).encode()
        header = MAGIC + _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        self._truncate(0)
        self._write(header)
        self._header_size = len(header)
        os.fsync(self._fd)
        _sync_dir(self.path.parent)  # the new file's name survives a crash too

    def _replay(self, offset: int) -> None:
        """Index the frames from `offset` on, one at a time (the file may be far bigger than
        the agent's memory), cutting off a torn or corrupt tail."""
        acked: set[str] = set()
        while offset < self._size:
            found = self._frame_at(offset)
            entry = _entry(found, offset) if found is not None else None
            if found is None or (entry is None and not found[0].startswith(_ACK)):
                log.error(
                    "spill file has a torn or corrupt tail: the rounds before it are kept",
                    extra={
                        "path": str(self.path),
                        "kept_bytes": offset,
                        "cut_bytes": self._size - offset,
                    },
                )
                os.ftruncate(self._fd, offset)
                break
            if entry is None:
                acked.add(found[0][1:].decode(errors="replace"))
            else:
                self._pending.append(entry)
                self._pending_bytes += entry.size
                self._pending_rounds += entry.rounds
            offset = found[1]
        self._size = offset
        while self._pending and self._pending[0].batch_id in acked:
            self._forget_first()
        if not self._pending:
            self._truncate(self._header_size)

    def _frame_at(self, offset: int) -> tuple[bytes, int] | None:
        """The payload of the frame at `offset` and where the next begins; None if torn or
        corrupt."""
        if offset + _FRAME.size > self._size:
            return None
        length, crc = _FRAME.unpack(os.pread(self._fd, _FRAME.size, offset))
        start = offset + _FRAME.size
        if start + length > self._size:
            return None
        payload = os.pread(self._fd, length, start)
        if len(payload) != length or zlib.crc32(payload) != crc:
            return None
        return payload, start + length

    def _make_room(self, needed: int, keep_first: bool) -> int:
        if self._size + needed <= self.max_bytes:
            return 0
        if self._dead_bytes():
            self._compact()
        if self._size + needed <= self.max_bytes:
            return 0
        dropped = 0
        room = (self.max_bytes - self._header_size) * 3 // 4
        skip = 1 if keep_first else 0
        while len(self._pending) > skip and self._pending_bytes + needed > room:
            entry = self._pending[skip]
            del self._pending[skip]
            self._pending_bytes -= entry.size
            self._pending_rounds -= entry.rounds
            dropped += entry.rounds
        if dropped:
            self._compact()
        return dropped

    def _compact(self) -> None:
        """Copy the header and the pending frames to a new file that replaces this one."""
        spare = self.path.with_name(self.path.name + ".compact")
        fd = os.open(spare, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, os.pread(self._fd, self._header_size, 0))
            kept: deque[_Entry] = deque()
            offset = self._header_size
            for entry in self._pending:
                _write_all(fd, os.pread(self._fd, entry.size, entry.offset))
                kept.append(_Entry(entry.batch_id, offset, entry.size, entry.rounds))
                offset += entry.size
            os.fsync(fd)
            os.replace(spare, self.path)
        except BaseException:
            os.close(fd)
            raise
        _sync_dir(self.path.parent)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the new file is ours alone as well
        os.close(self._fd)
        self._fd, self._size, self._pending = fd, offset, kept

    def _dead_bytes(self) -> int:
        return self._size - self._header_size - self._pending_bytes

    def _forget_first(self) -> None:
        entry = self._pending.popleft()
        self._pending_bytes -= entry.size
        self._pending_rounds -= entry.rounds

    def _write(self, data: bytes) -> None:
        os.lseek(self._fd, self._size, os.SEEK_SET)
        _write_all(self._fd, data)
        self._size += len(data)

    def _truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        self._size = size


def _entry(found: tuple[bytes, int], offset: int) -> _Entry | None:
    """The index entry of a batch frame; None when the frame is not a readable batch."""
    payload, end = found
    if not payload.startswith(_BATCH):
        return None
    try:
        head = json.loads(payload[1 : payload.index(b"\n")])
        return _Entry(str(head["id"]), offset, end - offset, len(head["targets"]))
    except (ValueError, KeyError, TypeError):
        return None


def _batch(payload: bytes) -> SpilledBatch:
    lines = payload[1:].split(b"\n")
    head = json.loads(lines[0])
    return SpilledBatch(str(head["id"]), tuple(zip(head["targets"], lines[1:], strict=True)))


def _describe(owner: object) -> str:
    if isinstance(owner, dict):
        return f"source {owner.get('source')!r}, kind {owner.get('kind')!r}"
    return "no readable owner"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_dir(directory: Path) -> None:
    """Make a rename durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
