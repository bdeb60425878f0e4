"""Tenants and API keys: who may call the API, and whose jobs a call may see.

A key is ``htrq_`` and 43 random URL-safe characters (256 bits). Only its SHA-256 is stored:
a key that random needs no slow hash, and a lookup is one indexed equality. The key itself
is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import read_scope, session_scope
from htrq.models import DEFAULT_TENANT, ApiKey, Tenant, utcnow

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


def ensure_tenant(session: Session, name: str) -> Tenant:
    """The tenant called ``name``, made (with a new webhook secret) if it is new."""
    tenant = session.scalars(select(Tenant).where(Tenant.name == name)).first()
    if tenant is None:
        tenant = Tenant(name=name, webhook_secret=secrets.token_hex(32))
        session.add(tenant)
        session.flush()
    return tenant


def create_key(
    sessions: sessionmaker[Session], *, tenant: str, label: str | None = None
) -> tuple[KeyInfo, str]:
    """Make a key for ``tenant`` (made if new); returns the key's record and the key."""
    if not tenant.strip() or len(tenant) > 100:
        raise ValueError("a tenant name is 1 to 100 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with session_scope(sessions) as s:
        owner = ensure_tenant(s, tenant)
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
    """Revoke a key by its id; False if there is no such key (revoking twice is fine)."""
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


def default_tenant(sessions: sessionmaker[Session]) -> uuid.UUID:
    """The ``default`` tenant's id (made if missing): the owner of every job while
    ``HTRQ_AUTH=off`` and of jobs made before tenants existed."""
    with session_scope(sessions) as s:
        return ensure_tenant(s, DEFAULT_TENANT).id


def webhook_secret(sessions: sessionmaker[Session], name: str) -> str:
    with sessions() as s:
        secret = s.scalars(select(Tenant.webhook_secret).where(Tenant.name == name)).first()
    if secret is None:
        raise UnknownTenant(f"no tenant {name!r}")
    return secret


def _info(row: ApiKey, tenant: str) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        tenant=tenant,
        label=row.label,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
