"""ICMP answers to a TCP connect, read from the socket's error queue (IP_RECVERR).

With IP_RECVERR on, the kernel hands an ordinary (unprivileged) socket the ICMP type, code and
sender that aborted its connect. That tells a firewall's REJECT (admin-prohibited, port
unreachable) from a dead host and from a router saying the TTL ran out (`path_trace`).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from egresswatch.model import Reason
from egresswatch.probes.base import reason_for_errno

# linux/in.h, linux/in6.h, linux/errqueue.h; the socket module lacks some of these names.
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err: 16 bytes
_ERRQUEUE_READS = 8  # bound on entries drained from one socket's error queue

ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED = 3, 11
ICMP6_DST_UNREACH, ICMP6_TIME_EXCEEDED = 1, 3

# ICMPv4 destination-unreachable codes (RFC 792, RFC 1812) -> what they mean for a TCP connect.
_ICMP_UNREACH: dict[int, Reason] = {
    0: Reason.NET_UNREACHABLE,
    6: Reason.NET_UNREACHABLE,  # destination network unknown
    11: Reason.NET_UNREACHABLE,  # network unreachable for TOS
    # port unreachable: a TCP stack answers a closed port with RST, so an ICMP port
    # unreachable is a packet filter's REJECT (iptables' and nft's default for `reject`)
    3: Reason.FIREWALL_DENIED,
    9: Reason.FIREWALL_DENIED,  # network administratively prohibited
    10: Reason.FIREWALL_DENIED,  # host administratively prohibited
    13: Reason.FIREWALL_DENIED,  # communication administratively prohibited
}
# ICMPv6 destination-unreachable codes (RFC 4443).
_ICMP6_UNREACH: dict[int, Reason] = {
    0: Reason.NET_UNREACHABLE,  # no route to destination
    2: Reason.NET_UNREACHABLE,  # beyond scope of source address
    1: Reason.FIREWALL_DENIED,  # administratively prohibited
    4: Reason.FIREWALL_DENIED,  # port unreachable: a filter, as for ICMPv4
    5: Reason.FIREWALL_DENIED,  # source address failed ingress/egress policy
    6: Reason.FIREWALL_DENIED,  # reject route to destination
}

_ICMP_NAMES = {
    0: "net-unreachable",
    1: "host-unreachable",
    3: "port-unreachable",
    9: "net-prohibited",
    10: "host-prohibited",
    13: "admin-prohibited",
}
_ICMP6_NAMES = {
    0: "no-route",
    1: "admin-prohibited",
    3: "addr-unreachable",
    4: "port-unreachable",
    5: "policy-fail",
    6: "reject-route",
}


@dataclass(frozen=True)
class IcmpError:
    """An ICMP error the kernel matched to our socket: `struct sock_extended_err` + sender."""

    errno: int
    origin: int
    type: int
    code: int
    offender: str | None  # the router or host that sent the ICMP (SO_EE_OFFENDER)

    @property
    def time_exceeded(self) -> bool:
        wanted = ICMP6_TIME_EXCEEDED if self.origin == SO_EE_ORIGIN_ICMP6 else ICMP_TIME_EXCEEDED
        return self.type == wanted

    @property
    def unreachable(self) -> bool:
        wanted = ICMP6_DST_UNREACH if self.origin == SO_EE_ORIGIN_ICMP6 else ICMP_DEST_UNREACH
        return self.type == wanted

    @property
    def reason(self) -> Reason:
        """What this ICMP means for a connect; an unknown code falls back to the errno."""
        if self.unreachable:
            table = _ICMP6_UNREACH if self.origin == SO_EE_ORIGIN_ICMP6 else _ICMP_UNREACH
            found = table.get(self.code)
            if found is not None:
                return found
        # time exceeded (a routing loop, for a full-TTL connect) is EHOSTUNREACH to the kernel
        return reason_for_errno(self.errno) or Reason.HOST_UNREACHABLE

    def describe(self) -> str:
        """E.g. `ICMP admin-prohibited from 198.51.100.2`, in nft's and iptables' words."""
        version = "ICMPv6" if self.origin == SO_EE_ORIGIN_ICMP6 else "ICMP"
        if self.time_exceeded:
            kind = "time-exceeded"
        elif self.unreachable:
            names = _ICMP6_NAMES if self.origin == SO_EE_ORIGIN_ICMP6 else _ICMP_NAMES
            kind = names.get(self.code, f"unreachable code {self.code}")
        else:
            kind = f"type {self.type} code {self.code}"
        sender = f" from {self.offender}" if self.offender else ""
        return f"{version} {kind}{sender}"


def parse_extended_err(data: bytes) -> IcmpError | None:
    """Parse an IP_RECVERR/IPV6_RECVERR control message; None unless it came from ICMP."""
    if len(data) < _EXTENDED_ERR.size:
        return None
    ee_errno, origin, icmp_type, code, _pad, _info, _data = _EXTENDED_ERR.unpack_from(data)
    if origin not in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
        return None  # a local error (e.g. EMSGSIZE): the errno alone says it
    return IcmpError(ee_errno, origin, icmp_type, code, _offender(data[_EXTENDED_ERR.size :]))


def _offender(raw: bytes) -> str | None:
    """The sockaddr_in / sockaddr_in6 the kernel appends after the struct (SO_EE_OFFENDER)."""
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return str(ipaddress.IPv4Address(raw[4:8]))
    if family == socket.AF_INET6 and len(raw) >= 24:
        return str(ipaddress.IPv6Address(raw[8:24]))
    return None  # AF_UNSPEC: the kernel did not know the sender


def read_icmp_error(sock: socket.socket) -> IcmpError | None:
    """Drain the socket's error queue (non-blocking); the first ICMP error found, if any."""
    found: IcmpError | None = None
    for _ in range(_ERRQUEUE_READS):
        try:
            _data, ancillary, _flags, _addr = sock.recvmsg(64, 512, socket.MSG_ERRQUEUE)
        except OSError:  # EAGAIN: the queue is empty
            break
        for level, kind, cmsg in ancillary:
            if found is None and (level, kind) in (
                (socket.IPPROTO_IP, IP_RECVERR),
                (socket.IPPROTO_IPV6, IPV6_RECVERR),
            ):
                found = parse_extended_err(cmsg)
    return found
