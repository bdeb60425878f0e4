"""Webhook secrets at rest and in rotation: stored encrypted under HTRQ_SECRET_KEY, rotated
with an overlap in which both secrets sign, and no longer a key to anything else."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from htrq import jobs
from htrq.cli import main
from htrq.db import make_engine, make_sessions
from htrq.delivery.webhooks import deliver_due, verify
from htrq.jobs.claims import claim_pages, write_failure
from htrq.models import Tenant, utcnow
from htrq.settings import Settings
from htrq.storage import DirectoryStore
from htrq.tenants import create_key, encrypt_secrets, rotate_secret, webhook_secret
from htrq.tenants.secretbox import PREFIX, SecretBox
from migrations import upgrade
from tests.images import page_png
from tests.receiver import Receiver

KEY = "k" * 40
NEW_KEY = "n" * 40


@pytest.fixture
def tenant(engine: Engine) -> Iterator[tuple[sessionmaker[Session], str]]:
    """A committed tenant, made with secrets sealed under KEY; deleted afterwards."""
    sessions = make_sessions(engine)
    name = f"sealed-{uuid.uuid4().hex[:8]}"
    create_key(sessions, tenant=name, box=SecretBox([KEY]))
    yield sessions, name
    with sessions.begin() as s:
        for t in s.scalars(select(Tenant).where(Tenant.name == name)):
            s.delete(t)


def _stored(sessions: sessionmaker[Session], name: str) -> Tenant:
    with sessions() as s:
        return s.scalars(select(Tenant).where(Tenant.name == name)).one()


def _finished_job(sessions: sessionmaker[Session], settings: Settings, name: str, url: str):
    tenant_id = _stored(sessions, name).id
    job, _ = jobs.submit(
        sessions=sessions,
        storage=DirectoryStore(settings.storage_dir),
        send=lambda ids, countdown=0, queue=None: None,
        settings=settings,
        tenant_id=tenant_id,
        uploads=[jobs.Upload("a.png", page_png("a"))],
        callback_url=url,
    )
    with sessions.begin() as s:
        (c,) = claim_pages(s, [job.pages[0].id], lease_seconds=60)
        write_failure(s, c, code="invalid_image", message="x")
    return job.id


def test_a_secret_is_stored_encrypted_and_signs_as_before(
    tenant: tuple[sessionmaker[Session], str], settings: Settings
) -> None:
    """With a server key the row holds only a Fernet token (not the secret); the secret read
    with the key signs the delivered webhook; without the key nothing can read it."""
    sessions, name = tenant
    stored = _stored(sessions, name).webhook_secret
    secret = webhook_secret(sessions, name, box=SecretBox([KEY]))
    assert stored.startswith(PREFIX) and secret not in stored and len(secret) == 64
    with pytest.raises(Exception, match="HTRQ_SECRET_KEY"):
        webhook_secret(sessions, name)
    with Receiver() as receiver:
        _finished_job(sessions, settings, name, receiver.url)
        keyed = settings.model_copy(update={"secret_key": KEY})
        assert deliver_due(sessions, keyed, box=SecretBox([KEY])) >= 1
    (got,) = [r for r in receiver.requests if r.answered == 204]
    assert verify(secret, got.body, got.headers["Htrq-Signature"])


def test_during_a_rotation_both_secrets_sign_and_after_it_only_the_new(
    tenant: tuple[sessionmaker[Session], str], settings: Settings
) -> None:
    """rotate-secret: while the overlap lasts each webhook carries two v1 signatures, one
    per secret; once it has passed, only the new secret's."""
    sessions, name = tenant
    box = SecretBox([KEY])
    old = webhook_secret(sessions, name, box=box)
    from datetime import timedelta

    rotated = rotate_secret(sessions, name, box=box, overlap=timedelta(hours=1))
    assert rotated.secret != old and webhook_secret(sessions, name, box=box) == rotated.secret
    with Receiver() as receiver:
        _finished_job(sessions, settings, name, receiver.url)
        deliver_due(sessions, settings, box=box)
        with sessions.begin() as s:  # the overlap ends
            s.execute(
                update(Tenant)
                .where(Tenant.name == name)
                .values(webhook_secret_previous_until=utcnow() - timedelta(seconds=1))
            )
        _finished_job(sessions, settings, name, receiver.url)
        deliver_due(sessions, settings, box=box)
    during, after = [r for r in receiver.requests if r.answered == 204]
    assert during.headers["Htrq-Signature"].count("v1=") == 2
    assert verify(old, during.body, during.headers["Htrq-Signature"])
    assert verify(rotated.secret, during.body, during.headers["Htrq-Signature"])
    assert after.headers["Htrq-Signature"].count("v1=") == 1
    assert not verify(old, after.body, after.headers["Htrq-Signature"])
    assert verify(rotated.secret, after.body, after.headers["Htrq-Signature"])


def test_encrypt_secrets_seals_plain_rows_and_moves_them_to_a_new_key(engine: Engine) -> None:
    """A secret stored in plain text is sealed by encrypt-secrets; with a new key first and
    the old one after it, a second run re-seals it under the new key alone; the secret
    itself never changes."""
    sessions = make_sessions(engine)
    name = f"plain-{uuid.uuid4().hex[:8]}"
    create_key(sessions, tenant=name)  # no key: plain text, as before this change
    try:
        plain = _stored(sessions, name).webhook_secret
        assert not plain.startswith(PREFIX)
        assert encrypt_secrets(sessions, box=SecretBox([KEY])) >= 1
        assert webhook_secret(sessions, name, box=SecretBox([KEY])) == plain
        assert encrypt_secrets(sessions, box=SecretBox([NEW_KEY, KEY])) >= 1
        assert webhook_secret(sessions, name, box=SecretBox([NEW_KEY])) == plain
        assert encrypt_secrets(sessions, box=SecretBox([NEW_KEY])) == 0  # nothing left to do
    finally:
        with sessions.begin() as s:
            for t in s.scalars(select(Tenant).where(Tenant.name == name)):
                s.delete(t)


def test_the_migration_encrypts_the_secrets_stored_before_it(scratch_pg_url: str) -> None:
    """A tenant's plain secret stored under revision 0006 is, after `htrq migrate` with
    HTRQ_SECRET_KEY set, stored sealed, and reads back as the same secret."""
    upgrade(scratch_pg_url, "0006")
    engine = make_engine(scratch_pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tenants (id, name, webhook_secret, created_at) "
                    "VALUES (:i, 'old', :s, now())"
                ),
                {"i": uuid.uuid4(), "s": "a" * 64},
            )
        upgrade(scratch_pg_url, secret_key=KEY)
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT webhook_secret FROM tenants WHERE name = 'old'")
            ).scalar_one()
        assert stored.startswith(PREFIX) and SecretBox([KEY]).open(stored) == "a" * 64
    finally:
        engine.dispose()


def test_the_cli_rotates_a_secret(
    tenant: tuple[sessionmaker[Session], str],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`htrq tenants rotate-secret NAME` prints the new secret, which `htrq tenants secret`
    then prints too; an unknown tenant is one line and exit 1."""
    sessions, name = tenant
    monkeypatch.setenv("HTRQ_DATABASE_URL", database_url)
    monkeypatch.setenv("HTRQ_SECRET_KEY", KEY)
    capsys.readouterr()
    assert main(["tenants", "rotate-secret", name, "--overlap-hours", "2"]) == 0
    new = capsys.readouterr().out.strip()
    assert main(["tenants", "secret", name]) == 0
    assert capsys.readouterr().out.strip() == new
    assert _stored(sessions, name).webhook_secret_previous is not None
    assert main(["tenants", "rotate-secret", "no-such-tenant"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_a_webhook_secret_opens_no_review_link(
    tenant: tuple[sessionmaker[Session], str], settings: Settings
) -> None:
    """A receiver knows its tenant's webhook secret; a review token made from it the way
    links used to be signed opens nothing (links are random tokens, checked by their hash)."""
    sessions, name = tenant
    settings = settings.model_copy(update={"auth": "required", "secret_key": KEY})
    secret = webhook_secret(sessions, name, box=SecretBox([KEY]))
    tenant_id = _stored(sessions, name).id
    job_id = _finished_job(sessions, settings, name, "http://127.0.0.1:9/hook")
    expires = int(time.time()) + 3600
    key = hmac.new(secret.encode(), b"htrq review link v1", hashlib.sha256).digest()
    mac = hmac.new(key, f"{job_id}\n{tenant_id}\n{expires}".encode(), hashlib.sha256).digest()
    forged = f"{expires}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for how in ({"headers": {"X-Review-Token": forged}}, {"params": {"t": forged}}):
            r = client.get(f"/v1/jobs/{job_id}/pages/0", **how)  # type: ignore[arg-type]
            assert r.status_code == 401, r.text
