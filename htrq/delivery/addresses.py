"""Where a callback may go: the addresses a callback URL's host resolves to, judged one by one.

A webhook is a request the service makes on a tenant's behalf, so a callback URL must not
reach what only the service can reach: loopback, private networks, link-local addresses and
above all a cloud's metadata service (169.254.169.254), which hands out credentials. Each
address is judged as the packet will travel:

- an IPv6 address that carries an IPv4 one is judged by that IPv4 address: IPv4-mapped
  (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), IPv4-translated (``::ffff:0:a.b.c.d``),
  NAT64 (``64:ff9b::a.b.c.d``, and the local-use ``64:ff9b:1::/48``, itself a private
  network), 6to4 (``2002:AABB:CCDD::``) and Teredo (``2001:0::/32``: its server and its
  client). ``http://[64:ff9b::7f00:1]/`` reaches 127.0.0.1 through a NAT64 gateway, so it is
  judged as 127.0.0.1;
- an address passes when it is globally reachable (``is_global``) and not multicast, or when
  it lies in a network the operator allowed (``HTRQ_WEBHOOK_ALLOW_NETWORKS``, or every
  private network with ``HTRQ_WEBHOOK_ALLOW_PRIVATE``);
- a metadata address never passes unless it is itself listed in
  ``HTRQ_WEBHOOK_ALLOW_NETWORKS`` (as ``169.254.169.254`` or ``169.254.169.254/32``): a
  network that merely contains it, or ``HTRQ_WEBHOOK_ALLOW_PRIVATE``, is not enough.

Every address a host resolves to must pass (a host with one public and one private address is
refused), and the dispatcher connects only to the addresses it judged
(:mod:`htrq.delivery.sending`), never resolving the host again.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from htrq.errors import PageError
from htrq.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud metadata services: AWS, GCP, Azure, OpenStack, DigitalOcean (169.254.169.254), AWS
#: ECS task metadata (169.254.170.2), AWS over IPv6 (fd00:ec2::254), Alibaba (100.100.100.200).
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)

#: What ``HTRQ_WEBHOOK_ALLOW_PRIVATE=true`` allows: loopback, the private and shared ranges,
#: link-local, unique-local IPv6 and NAT64 local-use (metadata addresses still refused).
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "64:ff9b:1::/48",
    )
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_COMPATIBLE = ipaddress.ip_network("::/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


@dataclass(frozen=True)
class CallbackPolicy:
    """Which addresses a callback may reach besides public ones."""

    #: Networks allowed although not public (``HTRQ_WEBHOOK_ALLOW_NETWORKS``, and the private
    #: ones when ``HTRQ_WEBHOOK_ALLOW_PRIVATE`` is on).
    networks: tuple[IPNetwork, ...] = ()
    #: Metadata addresses listed on their own in ``HTRQ_WEBHOOK_ALLOW_NETWORKS``.
    metadata_allowed: frozenset[IPAddress] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> CallbackPolicy:
        return cls.of(settings.allow_networks, allow_private=settings.webhook_allow_private)

    @classmethod
    def of(cls, networks: tuple[IPNetwork, ...], *, allow_private: bool = False) -> CallbackPolicy:
        listed = tuple(networks)
        explicit = frozenset(
            n.network_address for n in listed if n.num_addresses == 1 and n[0] in METADATA
        )
        return cls(
            networks=listed + (PRIVATE_NETWORKS if allow_private else ()),
            metadata_allowed=explicit,
        )

    def refusal(self, address: IPAddress) -> str | None:
        """Why a callback may not reach ``address`` (None: it may)."""
        carried = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else []
        for a in (address, *carried):
            if a in METADATA and a not in self.metadata_allowed:
                return f"{address} is a cloud metadata address"
        if self._listed(address):
            return None
        if carried:
            for v4 in carried:
                if not (self._listed(v4) or _public(v4)):
                    return f"{address} carries the internal IPv4 address {v4}"
            if address in _NAT64_LOCAL:
                return f"{address} is on a local-use NAT64 network"
            return None
        if not _public(address):
            return f"{address} is an internal address"
        return None

    def _listed(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, by the translation schemes that reach
    them (empty for a plain IPv6 address)."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.teredo is not None:
        server, client = address.teredo
        return [client, server]
    if address.sixtofour is not None:
        return [address.sixtofour]
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64 or address in _TRANSLATED:
        return [low32]
    if address in _NAT64_LOCAL:
        # RFC 6052 embeds the IPv4 address after the prefix, skipping bits 64-71; the
        # local-use prefix may be /48, /56, /64 or /96 long: judge every reading.
        return [low32, *(_rfc6052(address, bits) for bits in (48, 56, 64))]
    if address in _COMPATIBLE and int(address) > 1:  # not :: or ::1
        return [low32]
    return []


def _rfc6052(address: ipaddress.IPv6Address, prefix: int) -> ipaddress.IPv4Address:
    """The IPv4 address under an RFC 6052 prefix of ``prefix`` bits (48, 56 or 64)."""
    raw = address.packed
    start = prefix // 8
    octets = [raw[i] for i in range(start, 16) if i != 8][:4]
    return ipaddress.IPv4Address(bytes(octets))


def _public(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class Target:
    """A callback URL's host, the port to connect to and the addresses judged for it."""

    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def check_callback_url(url: str, policy: CallbackPolicy) -> Target:
    """The callback's :class:`Target`; raises ``PageError`` (422) for a URL that is not
    http(s) with a host, or whose host resolves to an address the policy refuses."""
    invalid = PageError(
        "invalid_callback_url",
        "callback_url must be an http(s) URL with a host, and a port from 1 to 65535 or none",
    )
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port out of range or not a number
    except ValueError:
        raise invalid from None
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2000:
        raise invalid
    if port == 0:
        raise invalid
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = _addresses(parts.hostname, port)
    for address in addresses:
        why = policy.refusal(address)
        if why is not None:
            raise PageError(
                "callback_not_allowed",
                f"callback_url resolves to an address webhooks may not reach ({why}); they go "
                "only to public hosts, or to networks the operator lists in "
                "HTRQ_WEBHOOK_ALLOW_NETWORKS",
            )
    return Target(parts.scheme, parts.hostname, port, addresses)


def _addresses(host: str, port: int) -> tuple[IPAddress, ...]:
    try:
        return (ipaddress.ip_address(host),)  # a literal needs no lookup
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise PageError(
            "invalid_callback_url", f"callback_url host {host!r} does not resolve"
        ) from exc
    # An IPv6 address with a zone (fe80::1%eth0) is judged without it.
    found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    return tuple(dict.fromkeys(found))
