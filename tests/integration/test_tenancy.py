"""API keys and tenants through the real API app, PostgreSQL and Redis: who may call, and
whose jobs each caller sees."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from api.main import create_app
from htrq.db import make_sessions
from htrq.models import ApiKey, Job, Tenant
from htrq.settings import Settings
from htrq.tenants import create_key, list_keys, revoke_key
from tests.images import page_png


@pytest.fixture
def keyed(settings: Settings, broker_url: str, engine: Engine) -> Iterator[tuple]:
    """The API with keys required, and two tenants' keys (committed, removed afterwards)."""
    sessions = make_sessions(engine)
    _, key_a = create_key(sessions, tenant="tenancy-a", label="test")
    _, key_b = create_key(sessions, tenant="tenancy-b")
    app = create_app(settings.model_copy(update={"auth": "required"}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}
    with sessions.begin() as s:
        for t in s.scalars(select(Tenant).where(Tenant.name.in_(["tenancy-a", "tenancy-b"]))):
            s.delete(t)


def _job(client: TestClient, headers: dict, **data: str) -> dict:
    r = client.post(
        "/v1/jobs",
        files=[("files", ("p.png", page_png(), "image/png"))],
        data=data,
        headers=headers,
    )
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_every_v1_route_needs_a_live_key(keyed: tuple, engine: Engine) -> None:
    """No key, an unknown key and a revoked key get 401 unauthorized on /v1; the probes stay
    open; OpenAPI declares the bearer scheme."""
    client, a, _ = keyed
    routes = [
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000"),
        ("DELETE", "/v1/jobs/00000000-0000-0000-0000-000000000000"),
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/export"),
    ]
    sessions = make_sessions(engine)
    info, revoked = create_key(sessions, tenant="tenancy-a")
    assert revoke_key(sessions, info.id)
    for headers in (
        {},
        {"Authorization": "Bearer htrq_not-a-key"},
        {"Authorization": f"Bearer {revoked}"},
    ):
        for method, path in routes:
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/jobs", headers=a).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


def test_keys_are_stored_hashed_and_listed_without_the_key(keyed: tuple, engine: Engine) -> None:
    """The key itself is nowhere in the database; the list shows its prefix only."""
    sessions = make_sessions(engine)
    info, key = create_key(sessions, tenant="tenancy-a", label="hashed")
    with sessions() as s:
        row = s.get_one(ApiKey, info.id)
        assert key not in (row.key_hash, row.prefix) and len(row.key_hash) == 64
    listed = [k for k in list_keys(sessions) if k.id == info.id]
    assert listed and listed[0].prefix == key[:12] and listed[0].label == "hashed"


def test_another_tenants_job_is_not_found_on_every_route(keyed: tuple) -> None:
    """Read, page, page export, job export, retry and delete of tenant A's job answer 404 to
    tenant B (as for a job that does not exist), and B's list does not show it."""
    client, a, b = keyed
    job = _job(client, a)
    jid = job["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{jid}"),
        ("GET", f"/v1/jobs/{jid}/pages/0"),
        ("GET", f"/v1/jobs/{jid}/pages/0/export"),
        ("GET", f"/v1/jobs/{jid}/export"),
        ("POST", f"/v1/jobs/{jid}/retry"),
        ("DELETE", f"/v1/jobs/{jid}"),
    ]:
        r = client.request(method, path, headers=b)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    assert jid not in [j["id"] for j in client.get("/v1/jobs", headers=b).json()["jobs"]]
    assert jid in [j["id"] for j in client.get("/v1/jobs", headers=a).json()["jobs"]]
    assert client.get(f"/v1/jobs/{jid}", headers=a).status_code == 200  # still there for A


def test_idempotency_keys_and_external_ids_are_each_tenants_own(keyed: tuple) -> None:
    """The same Idempotency-Key (or external_id) from two tenants makes two jobs; a repeat
    within one tenant answers its first job."""
    client, a, b = keyed
    key = {"Idempotency-Key": "same-key-for-both"}
    ja, jb = _job(client, a | key), _job(client, b | key)
    assert ja["id"] != jb["id"]
    assert _job(client, a | key)["id"] == ja["id"]
    ea, eb = _job(client, a, external_id="dms-1"), _job(client, b, external_id="dms-1")
    assert ea["id"] != eb["id"]


def test_auth_off_acts_as_the_default_tenant(
    settings: Settings, broker_url: str, caplog: pytest.LogCaptureFixture, engine: Engine
) -> None:
    """With HTRQ_AUTH=off no key is needed, jobs go to the default tenant, and the app says
    so in a warning at start."""
    with caplog.at_level("WARNING"):
        app = create_app(settings.model_copy(update={"auth": "off"}))
    assert any("HTRQ_AUTH=off" in r.message for r in caplog.records)
    with TestClient(app) as client:
        job = _job(client, {})
        with make_sessions(engine)() as s:
            owner = s.scalars(
                select(Tenant.name).join(Job, Job.tenant_id == Tenant.id).where(Job.id == job["id"])
            ).one()
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert owner == "default"
