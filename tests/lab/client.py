"""What the test asks from inside a lab namespace, through `Lab.call`: HTTP to the controller,
a DNS question, a TCP connect. Plain blocking calls, each bounded by a timeout."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

from dnslib import QTYPE, RCODE, DNSRecord

TIMEOUT_S = 5.0


def get(url: str) -> dict[str, Any]:
    """GET `url` directly (never through a proxy from the environment): status and body."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            return {"status": response.status, "body": response.read().decode()}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")}
    except OSError as exc:
        raise RuntimeError(f"GET {url}: {exc}") from None


def resolves(server: str, name: str) -> bool:
    """True when `server` answers an A question for `name` with NOERROR and a record."""
    try:
        answer = DNSRecord.parse(DNSRecord.question(name, "A").send(server, 53, timeout=1.0))
    except OSError:
        return False
    return answer.header.rcode == RCODE.NOERROR and any(r.rtype == QTYPE.A for r in answer.rr)


def listening(host: str, port: int) -> bool:
    """True when a TCP connect to host:port succeeds within a second."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
