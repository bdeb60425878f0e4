"""Webhook signatures against fixed known answers: what a receiver in any language must
compute, and what it must refuse."""

from __future__ import annotations

from htrq.delivery.webhooks import sign, verify

SECRET = "whsec_5f2b8c1e"
OLD_SECRET = "old-secret-9a7e"
T = 1_700_000_000
BODY = b'{"id":"0b6f1c2e-4d3a-4f7e-9a51-2c8d1e6f3b70","type":"job.finished"}'
#: HMAC-SHA256 of "1700000000." + BODY under SECRET, and under OLD_SECRET, computed once with
#: ``hmac.new(secret.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()``.
V1 = "fd32fd2a7d1dc88a70c138b2c1299628070b8eaf780986e790d10a644679297a"
V1_OLD = "7b03f2c0a93251ed1badb88eac21f1bdf4cff6da90b07ccb6dfd31b958fa880e"


def test_the_signature_is_the_known_hmac() -> None:
    """sign(secret, body, t) is exactly t=<t>,v1=<the known hex>."""
    assert sign(SECRET, BODY, T) == f"t={T},v1={V1}"


def test_during_a_rotation_both_secrets_sign() -> None:
    """With the new and the old secret, the header carries both v1 entries, the new first, and
    a receiver holding either accepts it."""
    header = sign([SECRET, OLD_SECRET], BODY, T)
    assert header == f"t={T},v1={V1},v1={V1_OLD}"
    assert verify(SECRET, BODY, header, now=T)
    assert verify(OLD_SECRET, BODY, header, now=T)
    assert not verify("another secret", BODY, header, now=T)


def test_a_fresh_signature_verifies_and_a_stale_one_is_refused() -> None:
    """Within the 300 s tolerance the known header verifies; a second past it, or in the
    future beyond it, it is refused though the HMAC matches."""
    header = f"t={T},v1={V1}"
    assert verify(SECRET, BODY, header, now=T + 300)
    assert verify(SECRET, BODY, header, now=T - 300)
    assert not verify(SECRET, BODY, header, now=T + 301)
    assert not verify(SECRET, BODY, header, now=T - 301)


def test_altered_or_malformed_headers_are_refused() -> None:
    """Another body, another timestamp, a changed MAC, no v1, two timestamps or garbage:
    False, never an exception."""
    assert not verify(SECRET, BODY + b" ", f"t={T},v1={V1}", now=T)
    assert not verify(SECRET, BODY, f"t={T + 1},v1={V1}", now=T)
    assert not verify(SECRET, BODY, f"t={T},v1={V1[:-1]}0", now=T)
    for header in (f"t={T}", f"v1={V1}", f"t={T},t={T},v1={V1}", "garbage", "", "t=x,v1=y"):
        assert not verify(SECRET, BODY, header, now=T), header
