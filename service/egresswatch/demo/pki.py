"""The demo's certificates: a CA made at start, and one server certificate per demo name.

The CA exists only for the life of one demo run; its certificate is written out (`ca.pem`) so
the service (and a curious person, with `curl --cacert`) can verify the endpoints. The private
keys never touch the demo's directory: the server contexts load them from a throwaway one.
"""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from egresswatch.localca import Leaf, LocalCa

CA_NAME = "egresswatch demo CA"


@dataclass(frozen=True)
class DemoPki:
    """The CA's certificate (PEM) and a server TLS context per demo name."""

    ca_pem: bytes
    contexts: dict[str, ssl.SSLContext]


def make_pki(names: list[str]) -> DemoPki:
    """Make a CA and, for each DNS name in `names`, a server context presenting a leaf for it."""
    ca = LocalCa(CA_NAME)
    contexts = {name: _server_context(ca.issue(name)) for name in names}
    return DemoPki(ca.cert_pem, contexts)


def _server_context(leaf: Leaf) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # The ssl module loads a certificate and key only from files: a private directory that is
    # gone as soon as they are loaded.
    with tempfile.TemporaryDirectory(prefix="egresswatch-demo-key-") as directory:
        cert_file, key_file = Path(directory) / "cert.pem", Path(directory) / "key.pem"
        cert_file.write_bytes(leaf.cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(leaf.key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context
