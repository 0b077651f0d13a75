"""resolv.conf as a pod's libc reads it: nameservers, search list, ndots, timeout, attempts.

This follows resolv.conf(5) and glibc's `res_init`, so the `dns_cluster` step asks the names a
pod would ask, in the order it would ask them:

- `nameserver ADDR`: at most three are used (glibc's MAXNS); lines whose address does not parse
  are ignored, as glibc does, and do not count towards the three. With no usable nameserver the
  resolver falls back to glibc's default, 127.0.0.1 port 53.
- `search D1 D2 ...` and `domain D`: the last of these lines wins.
- `options ndots:N timeout:N attempts:N`: values are clamped to glibc's limits (ndots 0-15,
  timeout 1-30 seconds, attempts 1-5); other options and malformed values are ignored.
- a line starting with `#` or `;` is a comment, and so is the rest of a line from a word that
  starts with one of them (`nameserver 10.0.0.10  # kube-dns`).

One extension: a nameserver may carry a port, as `ADDR#PORT` (`nameserver 127.0.0.1#5353`),
`IPv4:PORT` or `[IPv6]:PORT`. libc has no such thing; it lets tests point a resolv.conf at a DNS
server on a loopback high port.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from egresswatch.addresses import Nameserver

MAX_NAMESERVERS = 3  # glibc MAXNS
MAX_NDOTS = 15  # glibc RES_MAXNDOTS
MAX_TIMEOUT_S = 30  # glibc RES_MAXRETRANS
MAX_ATTEMPTS = 5  # glibc RES_MAXRETRY


@dataclass(frozen=True)
class ResolvConf:
    """The resolver settings of a source, as libc would apply them."""

    nameservers: tuple[Nameserver, ...]
    search: tuple[str, ...] = ()
    ndots: int = 1
    timeout_s: float = 5.0
    attempts: int = 2

    def candidates(self, name: str) -> list[str]:
        """The absolute names (with trailing dot) glibc's res_search tries for `name`, in order.

        A name ending in `.` is tried only as is. A name with at least `ndots` dots is tried as
        is first, then with each search domain. Any other name is tried with each search domain
        first and as is last.
        """
        name = name.strip()
        if name.endswith("."):
            return [name]
        with_search = [f"{name}.{domain}." for domain in self.search]
        if name.count(".") >= self.ndots:
            return [f"{name}.", *with_search]
        return [*with_search, f"{name}."]


def parse_resolv_conf(text: str) -> ResolvConf:
    """Parse resolv.conf text the way glibc does (see the module docstring).

    Never raises for odd content: libc ignores what it does not understand, and so do we. With
    no usable `nameserver` line the result holds glibc's default, 127.0.0.1.
    """
    nameservers: list[Nameserver] = []
    search: tuple[str, ...] = ()
    options: dict[str, int] = {}
    for line in text.splitlines():
        words = _words(line)
        if len(words) < 2:
            continue  # blank, comment, or a keyword without a value: glibc skips these
        keyword, values = words[0], words[1:]
        if keyword == "nameserver" and len(nameservers) < MAX_NAMESERVERS:
            with contextlib.suppress(ValueError):  # glibc skips an address it cannot parse
                nameservers.append(Nameserver.parse(values[0]))
        elif keyword == "search":
            search = _domains(values)
        elif keyword == "domain":
            search = _domains(values[:1])
        elif keyword == "options":
            options.update(_options(values))
    return ResolvConf(
        nameservers=tuple(nameservers) or (Nameserver("127.0.0.1"),),
        search=search,
        ndots=options.get("ndots", 1),
        timeout_s=float(options.get("timeout", 5)),
        attempts=options.get("attempts", 2),
    )


def load_resolv_conf(path: Path) -> ResolvConf:
    """Read and parse a resolv.conf file.

    Every round calls this, so it reads the file again only when its inode, size or
    modification time changed (one stat instead of open, read and parse); a file rewritten in
    place or replaced (the kubelet's way) is read afresh. Raises the OSError of the stat or
    read when the file cannot be read; it names the path (`exc.filename`) and says why
    (`exc.strerror`).
    """
    where = str(path)
    stat = os.stat(where)
    return _parsed(where, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _parsed(path: str, inode: int, size: int, mtime_ns: int) -> ResolvConf:
    """The parse of `path` as it was at (inode, size, mtime_ns): the key is the version."""
    return parse_resolv_conf(Path(path).read_text(encoding="utf-8", errors="replace"))


def _words(line: str) -> list[str]:
    """The words of a line up to a comment: a word starting with `#` or `;` ends the line.

    Only a whole word starts a comment, so `127.0.0.1#5353` stays one word.
    """
    words: list[str] = []
    for word in line.split():
        if word.startswith(("#", ";")):
            break
        words.append(word)
    return words


def _domains(values: list[str]) -> tuple[str, ...]:
    """Search domains without trailing dots; a lone `.` (the root) adds nothing, so drop it."""
    return tuple(d.rstrip(".") for d in values if d.rstrip("."))


# option name -> (lowest, highest) accepted value, clamped like glibc.
_OPTION_LIMITS: dict[str, tuple[int, int]] = {
    "ndots": (0, MAX_NDOTS),
    "timeout": (1, MAX_TIMEOUT_S),
    "attempts": (1, MAX_ATTEMPTS),
}


def _options(values: list[str]) -> dict[str, int]:
    """The numeric options we use, clamped to glibc's limits; others are ignored."""
    found: dict[str, int] = {}
    for value in values:
        key, sep, number = value.partition(":")
        if not sep or key not in _OPTION_LIMITS or not number.isdigit():
            continue
        low, high = _OPTION_LIMITS[key]
        found[key] = min(max(int(number), low), high)
    return found
