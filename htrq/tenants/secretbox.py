"""Webhook secrets at rest: encrypted with the server's key, and rotated with an overlap.

A tenant's webhook secret must be *kept*, not hashed: the workers sign with it. Two ways keep
it out of a database backup: derive it (an HMAC of a server key and the tenant id, nothing
stored) or store it encrypted under a server key. htrq encrypts (Fernet: AES-128-CBC with
HMAC-SHA256, from the ``cryptography`` package), for three reasons:

- the secrets tenants hold today stay valid: the migration encrypts each stored one, where a
  derived secret would differ from it and break every receiver at the upgrade;
- the server key can be changed without changing any tenant's secret: ``HTRQ_SECRET_KEY``
  takes several keys, the first encrypts, every one decrypts, and
  ``htrq tenants encrypt-secrets`` re-encrypts every row under the first;
- a tenant's secret can be rotated on its own (``htrq tenants rotate-secret``), with the old
  one still signing for an overlap window, without a per-tenant counter in a derivation.

A stored value is ``fernet:<token>`` when encrypted. A value without the prefix is a secret
stored in plain text (before ``HTRQ_SECRET_KEY`` was set, or with none set, as in tests and
``htrq transcribe``); it is still read, and written encrypted the next time it is written
(or at once by ``htrq tenants encrypt-secrets``).

The keys are strings of at least 32 characters; each becomes a Fernet key through
HMAC-SHA256 under a fixed label, so any long random string will do
(``python -c "import secrets; print(secrets.token_urlsafe(32))"``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

PREFIX = "fernet:"
_LABEL = b"htrq webhook secrets v1"


class SecretKeyMissing(Exception):
    """A secret is stored encrypted and this process has no key (or not the right one)."""


class SecretBox:
    """Seals and opens stored webhook secrets with the server's keys (none: plain text)."""

    def __init__(self, keys: Sequence[str] = ()) -> None:
        fernets = [Fernet(_fernet_key(k)) for k in keys]
        self._first = fernets[0] if fernets else None
        self._fernet = MultiFernet(fernets) if fernets else None

    @classmethod
    def of(cls, secret_key: str | None) -> SecretBox:
        """The box for ``HTRQ_SECRET_KEY`` (comma-separated keys, the first encrypts)."""
        return cls(split_keys(secret_key))

    @property
    def encrypts(self) -> bool:
        return self._fernet is not None

    def seal(self, secret: str) -> str:
        """What is stored for ``secret``."""
        if self._fernet is None:
            return secret
        return PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        """The secret a stored value holds."""
        if not stored.startswith(PREFIX):
            return stored  # kept in plain text before a key was set
        if self._fernet is None:
            raise SecretKeyMissing(
                "webhook secrets are stored encrypted: set HTRQ_SECRET_KEY to the key they were "
                "encrypted with"
            )
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretKeyMissing(
                "a webhook secret was encrypted with a key HTRQ_SECRET_KEY does not hold; add "
                "the old key after the new one"
            ) from None

    def reseal(self, stored: str) -> str:
        """``stored`` under the first key (plain text sealed, older keys replaced)."""
        return stored if self.current(stored) else self.seal(self.open(stored))

    def current(self, stored: str) -> bool:
        """Whether ``stored`` is already as :meth:`seal` would write it now."""
        if self._first is None:
            return not stored.startswith(PREFIX)
        if not stored.startswith(PREFIX):
            return False
        try:
            self._first.decrypt(stored[len(PREFIX) :].encode())
        except InvalidToken:
            return False
        return True


def split_keys(secret_key: str | None) -> list[str]:
    return [k.strip() for k in (secret_key or "").split(",") if k.strip()]


def _fernet_key(key: str) -> bytes:
    return base64.urlsafe_b64encode(hmac.new(key.encode(), _LABEL, hashlib.sha256).digest())
