"""Which addresses a callback may reach: each judged as the packet travels (an IPv6 address
carrying an IPv4 one by that IPv4 address), metadata addresses only when listed themselves."""

from __future__ import annotations

import ipaddress

import pytest

from htrq.delivery.addresses import CallbackPolicy, check_callback_url, embedded_ipv4
from htrq.errors import PageError
from htrq.settings import Settings

CLOSED = CallbackPolicy()
PRIVATE = CallbackPolicy.of((), allow_private=True)
LISTED = CallbackPolicy.of(
    tuple(ipaddress.ip_network(n) for n in ("10.20.0.0/16", "fd12:3456::/32", "169.254.0.0/16"))
)
METADATA_LISTED = CallbackPolicy.of((ipaddress.ip_network("169.254.169.254/32"),))

#: address, what it reaches, and whether each policy lets a callback reach it:
#: (no networks allowed, HTRQ_WEBHOOK_ALLOW_PRIVATE, the LISTED networks).
TABLE = [
    ("93.184.215.14", "a public IPv4 host", True, True, True),
    ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", "a public IPv6 host", True, True, True),
    ("127.0.0.1", "loopback", False, True, False),
    ("10.20.1.2", "a private host in the listed network", False, True, True),
    ("10.30.1.2", "a private host outside it", False, True, False),
    ("192.168.0.10", "a private host", False, True, False),
    ("100.64.0.1", "carrier-grade NAT", False, True, False),
    ("169.254.169.254", "the metadata service", False, False, False),
    ("169.254.170.2", "ECS task metadata", False, False, False),
    ("100.100.100.200", "Alibaba metadata", False, False, False),
    ("169.254.10.10", "link-local", False, True, True),
    ("0.0.0.0", "this host", False, False, False),
    ("224.0.0.1", "multicast", False, False, False),
    ("::1", "IPv6 loopback", False, True, False),
    ("fd12:3456::1", "unique-local in the listed network", False, True, True),
    ("fe80::1", "IPv6 link-local", False, True, False),
    ("fd00:ec2::254", "AWS metadata over IPv6", False, False, False),
    ("ff02::1", "IPv6 multicast", False, False, False),
    # IPv6 addresses that carry an IPv4 one: judged by it.
    ("::ffff:127.0.0.1", "IPv4-mapped loopback", False, True, False),
    ("::ffff:169.254.169.254", "IPv4-mapped metadata", False, False, False),
    ("::ffff:93.184.215.14", "IPv4-mapped public", True, True, True),
    ("::127.0.0.1", "IPv4-compatible loopback", False, True, False),
    ("::ffff:0:7f00:1", "IPv4-translated loopback", False, True, False),
    ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1", False, True, False),
    ("64:ff9b::a9fe:a9fe", "NAT64 of the metadata service", False, False, False),
    ("64:ff9b::a14:102", "NAT64 of 10.20.1.2 (listed)", False, True, True),
    ("64:ff9b::5db8:d70e", "NAT64 of a public host", True, True, True),
    ("64:ff9b:1::7f00:1", "local-use NAT64 of 127.0.0.1", False, True, False),
    ("64:ff9b:1::5db8:d70e", "local-use NAT64 of a public host", False, True, False),
    (
        "64:ff9b:1:a9fe:a9:fe00::",
        "local-use NAT64 /48 of the metadata service",
        False,
        False,
        False,
    ),
    ("2002:7f00:1::", "6to4 of 127.0.0.1", False, True, False),
    ("2002:a9fe:a9fe::1", "6to4 of the metadata service", False, False, False),
    ("2002:5db8:d70e::1", "6to4 of a public host", True, True, True),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo of client 127.0.0.1", False, True, False),
]


@pytest.mark.parametrize(("address", "what", "closed", "private", "listed"), TABLE)
def test_each_address_is_judged_as_the_packet_travels(
    address: str, what: str, closed: bool, private: bool, listed: bool
) -> None:
    """Each address in the table passes or is refused under each policy as the table says."""
    ip = ipaddress.ip_address(address)
    got = [p.refusal(ip) is None for p in (CLOSED, PRIVATE, LISTED)]
    assert got == [closed, private, listed], (
        address,
        what,
        [p.refusal(ip) for p in (CLOSED, PRIVATE, LISTED)],
    )


def test_embedded_ipv4_addresses_are_decoded() -> None:
    """NAT64, 6to4, Teredo, mapped, compatible and translated addresses give the IPv4 address
    they reach; a plain IPv6 address gives none."""
    cases = {
        "64:ff9b::7f00:1": "127.0.0.1",
        "64:ff9b::a9fe:a9fe": "169.254.169.254",
        "2002:7f00:1::": "127.0.0.1",
        "::ffff:10.0.0.1": "10.0.0.1",
        "::10.0.0.1": "10.0.0.1",
        "::ffff:0:a00:1": "10.0.0.1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe": "127.0.0.1",  # Teredo client (obfuscated)
    }
    for v6, v4 in cases.items():
        assert ipaddress.ip_address(v4) in embedded_ipv4(ipaddress.IPv6Address(v6)), v6
    assert embedded_ipv4(ipaddress.IPv6Address("2606:2800:21f:cb07:6820:80da:af6b:8b2c")) == []
    assert embedded_ipv4(ipaddress.IPv6Address("::1")) == []


def test_the_metadata_address_is_allowed_only_when_listed_itself() -> None:
    """169.254.169.254 passes only with itself listed (as a /32), not under a network that
    contains it, nor with HTRQ_WEBHOOK_ALLOW_PRIVATE; its NAT64 form follows the same rule."""
    metadata = ipaddress.ip_address("169.254.169.254")
    assert METADATA_LISTED.refusal(metadata) is None
    assert METADATA_LISTED.refusal(ipaddress.ip_address("64:ff9b::a9fe:a9fe")) is None
    for policy in (LISTED, PRIVATE):
        assert policy.refusal(metadata) is not None
    assert METADATA_LISTED.refusal(ipaddress.ip_address("169.254.169.253")) is not None


def test_urls_with_translated_internal_addresses_are_refused() -> None:
    """The URLs of the report, refused with callback_not_allowed; a bad port or bracket is
    invalid_callback_url, not an error of the server."""
    for url in (
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:7f00:1::]/",
        "http://[::ffff:127.0.0.1]:8080/hook",
    ):
        with pytest.raises(PageError) as exc:
            check_callback_url(url, CLOSED)
        assert exc.value.code == "callback_not_allowed", url
    for url in ("http://example.com:99999/", "http://[::1/", "http://example.com:0/"):
        with pytest.raises(PageError) as exc:
            check_callback_url(url, CLOSED)
        assert exc.value.code == "invalid_callback_url", url


def test_allowed_networks_are_read_from_the_setting() -> None:
    """HTRQ_WEBHOOK_ALLOW_NETWORKS takes comma-separated networks and refuses a bad one,
    naming it."""
    s = Settings(webhook_allow_networks="10.20.0.0/16, fd12::/16,192.0.2.7")
    policy = CallbackPolicy.from_settings(s)
    assert policy.refusal(ipaddress.ip_address("10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("192.0.2.7")) is None
    assert policy.refusal(ipaddress.ip_address("10.21.0.1")) is not None
    with pytest.raises(ValueError, match=r"10\.0\.0\.1/8"):
        Settings(webhook_allow_networks="10.0.0.1/8")
