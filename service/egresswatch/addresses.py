"""How the config and the plan write the servers a round goes through: a DNS server
(`Nameserver`) and an HTTP proxy (`ProxyRoute`); and where a process listens (`parse_listen`).

Frozen value types with their parsers, beside `model` at the bottom of the layers: `settings`
validates with them and the probes use them, and neither may import the other (import-linter,
pyproject.toml). Only the standard library is imported here.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

DEFAULT_DNS_PORT = 53
_CURL_DEFAULT_PROXY_PORT = 1080  # what curl assumes for `http://proxy` without a port


@dataclass(frozen=True)
class Nameserver:
    """A DNS server to ask: an IP address (never a host name) and a port."""

    host: str
    port: int = DEFAULT_DNS_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_DNS_PORT:
            return self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Nameserver:
        """Parse `IP`, `IPv4:port`, `[IPv6]:port` or `IP#port`; ValueError says what is wrong."""
        text = text.strip()
        host, port_text = _split_nameserver(text)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"bad nameserver {text!r}: use an IP address, optionally with a port as "
                "IP#port, IPv4:port or [IPv6]:port"
            ) from None
        if port_text is None:
            return cls(str(address))
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text!r} in nameserver {text!r}: must be 1-65535")
        return cls(str(address), int(port_text))


def _split_nameserver(text: str) -> tuple[str, str | None]:
    """Split a nameserver into address and port text (None when no port is given)."""
    if "#" in text:
        host, _, port = text.partition("#")
        return host.removeprefix("[").removesuffix("]"), port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad nameserver {text!r}: write IPv6 with a port as [addr]:port")
        return host, (rest[1:] if rest else None)
    if text.count(":") == 1:  # IPv4:port; a bare IPv6 address has at least two colons
        host, _, port = text.partition(":")
        return host, port
    return text, None


@dataclass(frozen=True)
class ProxyRoute:
    """An HTTP proxy to reach an endpoint through; `origin` is `config` or `environment`."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    origin: str = "config"

    @property
    def address(self) -> str:
        """`host:port`, IPv6 in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        # Never the password: this text goes into evidence, logs and the API.
        user = f"{self.username}@" if self.username else ""
        return f"proxy {user}{self.address} ({self.origin})"

    def authorization(self) -> str | None:
        """The `Proxy-Authorization` value, or None without credentials."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    @classmethod
    def parse(cls, url: str, origin: str = "config") -> ProxyRoute:
        """Parse `http://[user:pass@]host[:port]`; ValueError says what is wrong.

        As curl does, a value without a scheme is taken as http:// and a missing port as 1080,
        because that is how HTTP(S)_PROXY values are commonly written. TLS to the proxy
        (`https://`) and SOCKS are not supported.
        """
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme == "https":
            raise ValueError(f"{url!r}: https:// proxies (TLS to the proxy) are not supported")
        if scheme != "http":
            raise ValueError(f"{url!r}: unsupported proxy scheme {scheme!r}, use http://")
        if not parts.hostname:
            raise ValueError(f"{url!r}: no proxy host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{url!r}: a proxy URL is http://[user:pass@]host:port, no path")
        try:
            port = parts.port or _CURL_DEFAULT_PROXY_PORT
        except ValueError:
            raise ValueError(f"{url!r}: bad proxy port") from None
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(parts.hostname.lower(), port, username, password, origin)


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[v6]:PORT` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"bad listen address {value!r}: use HOST:PORT, e.g. 127.0.0.1:9108")
    return host, int(port)
