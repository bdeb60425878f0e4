"""Tenants and API keys: who may call the API, and whose jobs a call may see.

A key is ``htrq_`` and 43 random URL-safe characters (256 bits). Only its SHA-256 is stored:
a key that random needs no slow hash, and a lookup is one indexed equality. The key itself
is shown once, when it is made.

Each tenant also has a webhook secret, which signs its completion webhooks; it is stored
encrypted under ``HTRQ_SECRET_KEY`` (:mod:`htrq.tenants.secretbox` says how and why) and can be
rotated with an overlap (:func:`rotate_secret`).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import read_scope, session_scope
from htrq.models import DEFAULT_TENANT, ApiKey, Tenant, utcnow
from htrq.tenants.secretbox import SecretBox

#: Secrets stored as they are: a process without ``HTRQ_SECRET_KEY`` (tests, ``transcribe``).
PLAIN = SecretBox()

KEY_PREFIX = "htrq_"


class UnknownTenant(LookupError):
    """No tenant of that name."""


@dataclass(frozen=True)
class KeyInfo:
    id: uuid.UUID
    tenant: str
    label: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_secret() -> str:
    """A new webhook secret: 256 random bits as 64 hex digits."""
    return secrets.token_hex(32)


def ensure_tenant(session: Session, name: str, *, box: SecretBox = PLAIN) -> Tenant:
    """The tenant called ``name``, made (with a new webhook secret, sealed by ``box``) if it
    is new."""
    tenant = session.scalars(select(Tenant).where(Tenant.name == name)).first()
    if tenant is None:
        tenant = Tenant(name=name, webhook_secret=box.seal(new_secret()))
        session.add(tenant)
        session.flush()
    return tenant


def create_key(
    sessions: sessionmaker[Session],
    *,
    tenant: str,
    label: str | None = None,
    box: SecretBox = PLAIN,
) -> tuple[KeyInfo, str]:
    """Make a key for ``tenant`` (made if new); returns the key's record and the key."""
    if not tenant.strip() or len(tenant) > 100:
        raise ValueError("a tenant name is 1 to 100 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with session_scope(sessions) as s:
        owner = ensure_tenant(s, tenant, box=box)
        row = ApiKey(tenant_id=owner.id, label=label, prefix=key[:12], key_hash=hash_key(key))
        s.add(row)
        s.flush()
        return _info(row, owner.name), key


def list_keys(sessions: sessionmaker[Session]) -> list[KeyInfo]:
    with sessions() as s:
        rows = s.execute(
            select(ApiKey, Tenant.name)
            .join(Tenant, ApiKey.tenant_id == Tenant.id)
            .order_by(Tenant.name, ApiKey.created_at)
        ).all()
        return [_info(key, name) for key, name in rows]


def revoke_key(sessions: sessionmaker[Session], key_id: uuid.UUID | str) -> bool:
    """Revoke a key by its id; False if there is no such key (revoking twice is fine).

    The review links made with the key stop working with it
    (:func:`htrq.tenants.review_links.check_token` checks the key that made each link)."""
    try:
        kid = uuid.UUID(str(key_id))
    except ValueError:
        return False
    with session_scope(sessions) as s:
        found = s.get(ApiKey, kid)
        if found is None:
            return False
        s.execute(
            update(ApiKey)
            .where(ApiKey.id == kid, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        return True


#: Built once: it runs on every request (see ``jobs._JOB_WITH_PAGES``).
_TENANT_OF_KEY = select(ApiKey.tenant_id).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)


def tenant_for_key(sessions: sessionmaker[Session], key: str) -> uuid.UUID | None:
    """The tenant a live key belongs to; None for an unknown or revoked key."""
    if not key.startswith(KEY_PREFIX):
        return None
    # One read on every request: outside a transaction, which would cost two round trips more.
    with read_scope(sessions) as s:
        return s.scalars(_TENANT_OF_KEY, {"key_hash": hash_key(key)}).first()


def default_tenant(sessions: sessionmaker[Session], *, box: SecretBox = PLAIN) -> uuid.UUID:
    """The ``default`` tenant's id (made if missing): the owner of every job while
    ``HTRQ_AUTH=off`` and of jobs made before tenants existed."""
    with session_scope(sessions) as s:
        return ensure_tenant(s, DEFAULT_TENANT, box=box).id


def webhook_secret(sessions: sessionmaker[Session], name: str, *, box: SecretBox = PLAIN) -> str:
    """The tenant's current webhook secret, for its receiver."""
    with sessions() as s:
        stored = s.scalars(select(Tenant.webhook_secret).where(Tenant.name == name)).first()
    if stored is None:
        raise UnknownTenant(f"no tenant {name!r}")
    return box.open(stored)


def tenant_id(sessions: sessionmaker[Session], name: str) -> uuid.UUID:
    """The id of the tenant called ``name``."""
    with sessions() as s:
        found = s.scalars(select(Tenant.id).where(Tenant.name == name)).first()
    if found is None:
        raise UnknownTenant(f"no tenant {name!r}")
    return found


@dataclass(frozen=True)
class Rotated:
    secret: str  #: the new secret, which signs from now on
    previous_until: datetime  #: until when the old one signs beside it


def rotate_secret(
    sessions: sessionmaker[Session], name: str, *, box: SecretBox, overlap: timedelta
) -> Rotated:
    """Give the tenant a new webhook secret; the old one keeps signing beside it (two ``v1``
    signatures per webhook) until ``overlap`` has passed, so that its receiver can switch to
    the new one in the meantime. Rotating again within the window ends the older one."""
    secret = new_secret()
    until = utcnow() + overlap
    with session_scope(sessions) as s:
        tenant = s.scalars(select(Tenant).where(Tenant.name == name).with_for_update()).first()
        if tenant is None:
            raise UnknownTenant(f"no tenant {name!r}")
        tenant.webhook_secret_previous = box.reseal(tenant.webhook_secret)
        tenant.webhook_secret_previous_until = until
        tenant.webhook_secret = box.seal(secret)
    return Rotated(secret, until)


def signing_secrets(
    stored: str, previous: str | None, previous_until: datetime | None, *, box: SecretBox
) -> list[str]:
    """The secrets a tenant's webhook is signed with now: its own, and the one it replaced
    while the rotation's overlap lasts."""
    found = [box.open(stored)]
    if previous is not None and previous_until is not None and previous_until > utcnow():
        found.append(box.open(previous))
    return found


def encrypt_secrets(sessions: sessionmaker[Session], *, box: SecretBox) -> int:
    """Store every tenant's webhook secrets under ``box``'s first key (those in plain text,
    and those under an older key); returns how many tenants were rewritten."""
    if not box.encrypts:
        raise ValueError("set HTRQ_SECRET_KEY first: it is the key the secrets are stored under")
    changed = 0
    with session_scope(sessions) as s:
        for tenant in s.scalars(select(Tenant).with_for_update()):
            previous = tenant.webhook_secret_previous
            if box.current(tenant.webhook_secret) and (previous is None or box.current(previous)):
                continue
            tenant.webhook_secret = box.reseal(tenant.webhook_secret)
            if previous is not None:
                tenant.webhook_secret_previous = box.reseal(previous)
            changed += 1
    return changed


def _info(row: ApiKey, tenant: str) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        tenant=tenant,
        label=row.label,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
