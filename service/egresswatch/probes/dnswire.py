"""DNS wire format on a by-name round's hot path: queries from templates, common replies read
directly, everything else by dnslib.

A by-name round asks four questions (two DNS steps, A and AAAA each). dnslib built and packed
each query (16 µs) and parsed each reply into objects (30 µs) to read four things from it: the
rcode, the TC bit, and the A/AAAA and CNAME records of the answer section
(docs/performance.md, "Where a round's CPU went"). Here:

- a query is a template packed once by dnslib per (name, type), with only the id changed;
- `read_common` reads the reply shape a resolver sends for an answer or a NODATA: our question
  echoed byte for byte, then only A, AAAA and CNAME records of class IN, names in dnslib's
  plain alphabet, compression pointers backwards only, nothing after the answer section. For
  anything else it answers `UNCOMMON`, and the caller parses with dnslib as before.

Contract: for every reply `read_common` reads, its answer is the one dnslib's parse and
`dnsclient._interpret` give, field for field (tests/test_dnswire.py compares the two on
generated and mutated replies); it never raises.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Final

from dnslib import AAAA, QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord
from dnslib.label import LDH


class Uncommon:
    """The type of `UNCOMMON`: a reply `read_common` leaves to dnslib."""


UNCOMMON: Final = Uncommon()

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, TTL, rdlength
_QR = 0x8000
_TC = 0x0200
_CLASS_IN = 1
_MAX_NAME_WIRE = 255  # RFC 1035 §3.1
_ALPHABET = frozenset(LDH)  # bytes dnslib prints as themselves; any other gets escaped
_TYPE_A, _TYPE_AAAA, _TYPE_CNAME = int(QTYPE.A), int(QTYPE.AAAA), int(QTYPE.CNAME)


@dataclass(frozen=True, slots=True)
class Query:
    """One question as sent: its id, the name and type asked, and the packet; `owner` and
    `owner_text` are the name as `read_common` compares and prints it (None: not plain)."""

    id: int
    name: str
    qtype: int
    wire: bytes
    owner: tuple[bytes, ...] | None = None
    owner_text: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """What one reply said about (qname, qtype).

    `rcode` is the rcode's name ("NOERROR", "NXDOMAIN", ... or "RCODE<n>" for one dnslib does not
    know). `cnames` is the chain followed from qname in the answer section, and `addresses` are
    the records of qtype owned by the end of that chain. `truncated` means the TC bit was set:
    the complete answer must be fetched over TCP.
    """

    rcode: str
    addresses: tuple[str, ...] = ()
    cnames: tuple[str, ...] = ()
    truncated: bool = False


def query(name: str, qtype: str, query_id: int) -> Query:
    """The recursive query for (name, qtype) with `query_id`: dnslib's packet, id replaced."""
    template, owner, owner_text = _template(name, qtype)
    wire = query_id.to_bytes(2, "big") + template[2:]
    return Query(query_id, name, QTYPE.reverse[qtype], wire, owner, owner_text)


@functools.lru_cache(maxsize=4096)  # rounds ask the same few names; a template is ~50 bytes
def _template(name: str, qtype: str) -> tuple[bytes, tuple[bytes, ...] | None, str]:
    """The packet with id 0, and its question's name as `_name` reads it (once, not per reply).
    DNSRecord.question's packet (rd set), with id 0 rather than a draw from `random`."""
    question = DNSQuestion(name, getattr(QTYPE, qtype))
    wire = bytes(DNSRecord(DNSHeader(id=0), q=question).pack())
    owner, owner_text, _after = _name(wire, _HEADER.size)
    return wire, owner, owner_text


def rcode_name(code: int) -> str:
    """dnslib's name for an rcode, or RCODE<n> for one it does not know."""
    return str(RCODE.forward.get(code, f"RCODE{code}"))


def read_common(sent: Query, data: bytes) -> Answer | Uncommon | None:
    """The answer in `data`, a reply whose id is `sent`'s; None when it is not a response;
    UNCOMMON when its shape is not the common one (see the module docstring)."""
    if len(data) < _HEADER.size:
        return UNCOMMON
    _id, flags, questions, answers, authority, additional = _HEADER.unpack_from(data)
    end = len(sent.wire)
    if questions != 1 or authority or additional or data[12:end] != sent.wire[12:]:
        return UNCOMMON
    records = _answer_section(data, end, answers)
    if records is None or sent.owner is None:
        return UNCOMMON
    if not flags & _QR:
        return None
    return _follow(records, sent.owner, sent.owner_text, sent.qtype, flags)


@dataclass(frozen=True, slots=True)
class _Record:
    """One answer record: its owner's lower-cased labels, its type, the address's text or the
    CNAME target's text, and for a CNAME the target's lower-cased labels."""

    owner: tuple[bytes, ...]
    rtype: int
    text: str
    target: tuple[bytes, ...] = ()


def _answer_section(data: bytes, offset: int, count: int) -> list[_Record] | None:
    """The answer section's records when all are A, AAAA or CNAME of class IN and fill the
    packet exactly; None otherwise."""
    records: list[_Record] = []
    for _ in range(count):
        owner, _text, offset = _name(data, offset)
        if owner is None or offset + _RR_FIXED.size > len(data):
            return None
        rtype, rclass, _ttl, length = _RR_FIXED.unpack_from(data, offset)
        start = offset + _RR_FIXED.size
        offset = start + length
        if rclass != _CLASS_IN or offset > len(data):
            return None
        record = _rdata(owner, data, start, length, rtype)
        if record is None:
            return None
        records.append(record)
    return records if offset == len(data) else None


def _rdata(
    owner: tuple[bytes, ...], data: bytes, start: int, length: int, rtype: int
) -> _Record | None:
    if rtype == _TYPE_A and length == 4:
        return _Record(owner, rtype, ".".join(map(str, data[start : start + 4])))
    if rtype == _TYPE_AAAA and length == 16:
        # dnslib's own text for it (not RFC 5952's: it compresses the first run of zeros).
        return _Record(owner, rtype, repr(AAAA(tuple(data[start : start + 16]))))
    if rtype == _TYPE_CNAME and length:
        target, text, after = _name(data, start)
        if target is not None and after == start + length:
            return _Record(owner, rtype, text, target)
    return None


def _name(data: bytes, offset: int) -> tuple[tuple[bytes, ...] | None, str, int]:
    """(lower-cased labels, dnslib's text, offset after the name) of the name at `offset`;
    labels None when it is not plain: a label outside dnslib's alphabet, a pointer that does
    not go back before the part it continues, an extended label type, or past 255 bytes."""
    labels: list[bytes] = []
    after = -1
    size = 0
    limit = offset  # each pointer must go before the last place jumped to: no loop is possible
    while offset < len(data):
        length = data[offset]
        if length == 0:
            text = ".".join(label.decode() for label in labels) + "."
            key = tuple(label.lower() for label in labels)
            return key, text, (offset + 1 if after < 0 else after)
        if length >= 0xC0 and offset + 1 < len(data):
            pointer = ((length & 0x3F) << 8) | data[offset + 1]
            if pointer >= limit:
                break
            if after < 0:
                after = offset + 2
            offset = limit = pointer
            continue
        label = data[offset + 1 : offset + 1 + length]
        size += length + 1
        if length > 63 or len(label) < length or size > _MAX_NAME_WIRE:
            break
        if not _ALPHABET.issuperset(label):
            break
        labels.append(label)
        offset += 1 + length
    return None, "", offset


def _follow(
    records: list[_Record], owner: tuple[bytes, ...], owner_text: str, qtype: int, flags: int
) -> Answer:
    """The CNAME chain from `owner` and the qtype records at its end, as
    `dnsclient._interpret` follows them in dnslib's records."""
    chain: list[str] = []
    seen = {owner_text.lower()}
    for _ in range(len(records)):
        hop = next((r for r in records if r.rtype == _TYPE_CNAME and r.owner == owner), None)
        if hop is None or hop.text.lower() in seen:
            break  # end of chain, or a loop
        seen.add(hop.text.lower())
        chain.append(hop.text)
        owner = hop.target
    return Answer(
        rcode=rcode_name(flags & 0x000F),
        addresses=tuple(r.text for r in records if r.rtype == qtype and r.owner == owner),
        cnames=tuple(chain),
        truncated=bool(flags & _TC),
    )
