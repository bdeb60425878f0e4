"""Review links through the real API app with keys required: a random, expiring, revocable
token opens one job's review page and the calls it makes, and nothing else."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from htrq.db import make_sessions
from htrq.models import ApiKey, ReviewLink, Tenant, utcnow
from htrq.settings import Settings
from htrq.storage import open_store
from htrq.tenants import create_key, hash_key, revoke_key
from htrq.tenants.review_links import make_token
from tests.finished import finished_letter

TENANTS = ["review-a", "review-b"]


@dataclass
class Keyed:
    client: TestClient
    settings: Settings
    sessions: sessionmaker[Session]
    a: dict[str, str]  #: tenant A's Authorization header
    b: dict[str, str]
    job_a: uuid.UUID  #: a finished job of A's (page 0 succeeded, page 1 queued)
    job_a2: uuid.UUID  #: another of A's
    job_b: uuid.UUID  #: one of B's
    tenant_a: uuid.UUID


@pytest.fixture
def keyed(settings: Settings, broker_url: str, engine: Engine) -> Iterator[Keyed]:
    """The API with keys required, two tenants with a key and finished jobs each (committed;
    the tenants, and with them their jobs, are deleted afterwards)."""
    settings = settings.model_copy(update={"auth": "required"})
    sessions = make_sessions(engine)
    storage = open_store(settings)
    _, key_a = create_key(sessions, tenant=TENANTS[0])
    _, key_b = create_key(sessions, tenant=TENANTS[1])
    with sessions() as s:
        ids = dict(s.execute(select(Tenant.name, Tenant.id).where(Tenant.name.in_(TENANTS))).all())
    try:
        jobs = [
            finished_letter(sessions, storage, settings, ids[name], queued_pages=1)
            for name in (TENANTS[0], TENANTS[0], TENANTS[1])
        ]
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield Keyed(
                client,
                settings,
                sessions,
                {"Authorization": f"Bearer {key_a}"},
                {"Authorization": f"Bearer {key_b}"},
                *jobs,
                tenant_a=ids[TENANTS[0]],
            )
    finally:
        with sessions.begin() as s:
            for t in s.scalars(select(Tenant).where(Tenant.name.in_(TENANTS))):
                s.delete(t)


def _link(k: Keyed, job: uuid.UUID, **body: int) -> dict:
    r = k.client.post(f"/v1/jobs/{job}/review-link", headers=k.a, json=body or None)
    assert r.status_code == 200, r.text
    return r.json()


def _token(url: str) -> str:
    return url.split("#t=", 1)[1]


def test_a_review_link_opens_the_page_and_its_calls_without_a_key(keyed: Keyed) -> None:
    """The link's URL is the job's review page with the token in its fragment; with the token
    in the X-Review-Token header the job, a page, its image and PATCH answer as with the
    tenant's key, and the token is stored only as its hash."""
    k = keyed
    link = _link(k, k.job_a)
    assert link["url"].startswith(f"http://testserver/review/{k.job_a}#t=htrv_")
    expires_at = datetime.fromisoformat(link["expires_at"].replace("Z", "+00:00")).timestamp()
    assert abs(expires_at - (time.time() + k.settings.review_link_seconds)) < 60
    token = _token(link["url"])
    page = k.client.get(f"/review/{k.job_a}")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "no-referrer" in page.headers["referrer-policy"]
    assert 'id="overlay"' in page.text
    h = {"X-Review-Token": token}
    assert k.client.get(f"/v1/jobs/{k.job_a}", headers=h).json()["id"] == str(k.job_a)
    assert k.client.get(f"/v1/jobs/{k.job_a}/pages/0", headers=h).json()["lines_to_review"] == 2
    assert k.client.get(f"/v1/jobs/{k.job_a}/pages/0/image", headers=h).status_code == 200
    r = k.client.patch(f"/v1/jobs/{k.job_a}/pages/0/lines/1", headers=h, json={"text": "yours"})
    assert r.status_code == 200 and r.json()["corrected"]
    # The DMS, with its key, sees the correction.
    page0 = k.client.get(f"/v1/jobs/{k.job_a}/pages/0", headers=k.a).json()
    assert page0["lines"][1]["text"] == "yours"
    with k.sessions() as s:
        stored = s.scalars(select(ReviewLink.token_hash).where(ReviewLink.job_id == k.job_a))
        assert list(stored) == [hash_key(token)]


def test_a_token_in_the_address_opens_nothing(keyed: Keyed) -> None:
    """A token sent as ``?t=`` (where access logs would keep it) is not taken: 401."""
    k = keyed
    token = _token(_link(k, k.job_a)["url"])
    for method, path in _reviewer_routes(k.job_a):
        r = k.client.request(method, path, params={"t": token}, json={"reviewed": True})
        assert r.status_code == 401, (method, path, r.text)


def test_an_image_fetched_with_a_token_is_not_cached(keyed: Keyed) -> None:
    """The page image answers ``Cache-Control: no-store`` to a review link's token; with an
    API key the browser may keep it a day, privately."""
    k = keyed
    token = _token(_link(k, k.job_a)["url"])
    path = f"/v1/jobs/{k.job_a}/pages/0/image"
    by_link = k.client.get(path, headers={"X-Review-Token": token})
    assert by_link.status_code == 200 and by_link.headers["cache-control"] == "no-store"
    by_key = k.client.get(path, headers=k.a)
    assert by_key.status_code == 200
    assert by_key.headers["cache-control"] == "private, max-age=86400"


def test_a_link_may_ask_for_its_lifetime_within_a_week(keyed: Keyed) -> None:
    """expires_in sets the expiry; under a minute or over a week is a 422."""
    k = keyed
    link = _link(k, k.job_a, expires_in=120)
    left = datetime.fromisoformat(link["expires_at"].replace("Z", "+00:00")).timestamp()
    assert 100 < left - time.time() <= 121
    for bad in (59, 7 * 86400 + 1):
        r = k.client.post(f"/v1/jobs/{k.job_a}/review-link", headers=k.a, json={"expires_in": bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_an_expired_link_is_refused(keyed: Keyed) -> None:
    """A token past its expiry answers 401 saying so on every call it could make."""
    k = keyed
    token, _ = make_token(
        k.sessions,
        k.settings,
        tenant_id=k.tenant_a,
        job_id=k.job_a,
        seconds=60,
        now=utcnow() - timedelta(seconds=61),
    )
    for method, path in _reviewer_routes(k.job_a):
        r = k.client.request(
            method, path, headers={"X-Review-Token": token}, json={"reviewed": True}
        )
        assert r.status_code == 401, (method, path, r.text)
        assert "expired" in r.json()["error"]["message"]


def test_an_altered_token_is_refused(keyed: Keyed) -> None:
    """A changed character, a bare prefix or garbage answers 401, not 404 or 500."""
    k = keyed
    token = _token(_link(k, k.job_a)["url"])
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (flipped, "htrv_", "x", "1.2", token + "x", "htrq_" + token[5:]):
        for method, path in _reviewer_routes(k.job_a):
            r = k.client.request(method, path, headers={"X-Review-Token": bad}, json={})
            assert r.status_code == 401, (bad, method, path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"


def test_a_link_opens_its_own_job_only(keyed: Keyed) -> None:
    """A's token for one job answers 401 for A's other job and for B's job, and never reaches
    routes a review page does not call (delete, retry, export, list, new links)."""
    k = keyed
    token = _token(_link(k, k.job_a)["url"])
    for job in (k.job_a2, k.job_b, uuid.uuid4()):
        for method, path in _reviewer_routes(job):
            r = k.client.request(
                method, path, headers={"X-Review-Token": token}, json={"reviewed": True}
            )
            assert r.status_code == 401, (job, method, path, r.text)
    for method, path in [
        ("DELETE", f"/v1/jobs/{k.job_a}"),
        ("POST", f"/v1/jobs/{k.job_a}/retry"),
        ("GET", f"/v1/jobs/{k.job_a}/export"),
        ("GET", f"/v1/jobs/{k.job_a}/pages/0/export"),
        ("POST", f"/v1/jobs/{k.job_a}/review-link"),
        ("DELETE", f"/v1/jobs/{k.job_a}/review-links"),
        ("DELETE", "/v1/review-links"),
        ("GET", "/v1/jobs"),
    ]:
        r = k.client.request(method, path, headers={"X-Review-Token": token})
        assert r.status_code == 401, (method, path, r.text)
    assert k.client.get(f"/v1/jobs/{k.job_a}", headers=k.a).status_code == 200  # not deleted


def test_review_routes_keep_tenants_apart_with_keys(keyed: Keyed) -> None:
    """With B's key, A's job is 404 on the review routes (PATCH, image, link) as on all."""
    k = keyed
    for method, path in _reviewer_routes(k.job_a):
        r = k.client.request(method, path, headers=k.b, json={"reviewed": True})
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    r = k.client.post(f"/v1/jobs/{k.job_a}/review-link", headers=k.b)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = k.client.patch(f"/v1/jobs/{k.job_b}/pages/0/lines/1", headers=k.b, json={"reviewed": True})
    assert r.status_code == 200


def test_without_a_key_or_a_link_nothing_opens(keyed: Keyed) -> None:
    """Without a key or a token the review routes answer 401 as JSON; the page itself is the
    same static page for anyone (its script says what to open), holding nothing of the job."""
    k = keyed
    for method, path in [*_reviewer_routes(k.job_a), ("POST", f"/v1/jobs/{k.job_a}/review-link")]:
        r = k.client.request(method, path)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
    r = k.client.get(f"/review/{k.job_a}")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert r.text == k.client.get(f"/review/{uuid.uuid4()}").text


def test_revoking_a_jobs_links_ends_them(keyed: Keyed) -> None:
    """DELETE /v1/jobs/{id}/review-links revokes that job's links (they answer 401 to reads
    and PATCH at once), not the links of the tenant's other jobs."""
    k = keyed
    one, two = (_token(_link(k, k.job_a)["url"]) for _ in range(2))
    other = _token(k.client.post(f"/v1/jobs/{k.job_a2}/review-link", headers=k.a).json()["url"])
    r = k.client.delete(f"/v1/jobs/{k.job_a}/review-links", headers=k.a)
    assert r.status_code == 200 and r.json() == {"revoked": 2}
    for token in (one, two):
        for method, path in _reviewer_routes(k.job_a):
            r = k.client.request(
                method, path, headers={"X-Review-Token": token}, json={"reviewed": True}
            )
            assert r.status_code == 401, (method, path, r.text)
    h = {"X-Review-Token": other}
    assert k.client.get(f"/v1/jobs/{k.job_a2}", headers=h).status_code == 200
    assert k.client.delete(f"/v1/jobs/{k.job_b}/review-links", headers=k.a).status_code == 404


def test_revoking_a_tenants_links_ends_them_all(keyed: Keyed) -> None:
    """DELETE /v1/review-links revokes every link of the caller's tenant, and no other
    tenant's."""
    k = keyed
    mine = [_token(_link(k, job)["url"]) for job in (k.job_a, k.job_a2)]
    theirs = _token(k.client.post(f"/v1/jobs/{k.job_b}/review-link", headers=k.b).json()["url"])
    r = k.client.delete("/v1/review-links", headers=k.a)
    assert r.status_code == 200 and r.json() == {"revoked": 2}
    for job, token in zip((k.job_a, k.job_a2), mine, strict=True):
        r = k.client.get(f"/v1/jobs/{job}/pages/0", headers={"X-Review-Token": token})
        assert r.status_code == 401
    r = k.client.get(f"/v1/jobs/{k.job_b}/pages/0", headers={"X-Review-Token": theirs})
    assert r.status_code == 200


def test_revoking_the_key_that_made_a_link_ends_the_link(keyed: Keyed) -> None:
    """After ``htrq keys revoke`` of the key that asked for a link, the link reads and
    PATCHes nothing; a link another (live) key of the tenant made still works."""
    k = keyed
    _, second = create_key(k.sessions, tenant=TENANTS[0], label="second")
    by_second = {"Authorization": f"Bearer {second}"}
    doomed = _token(
        k.client.post(f"/v1/jobs/{k.job_a}/review-link", headers=by_second).json()["url"]
    )
    kept = _token(_link(k, k.job_a)["url"])
    with k.sessions() as s:
        key_id = s.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(second))).one()
    assert revoke_key(k.sessions, key_id)
    for method, path in _reviewer_routes(k.job_a):
        r = k.client.request(
            method, path, headers={"X-Review-Token": doomed}, json={"reviewed": True}
        )
        assert r.status_code == 401, (method, path, r.text)
    r = k.client.get(f"/v1/jobs/{k.job_a}/pages/0", headers={"X-Review-Token": kept})
    assert r.status_code == 200


def _reviewer_routes(job: uuid.UUID) -> list[tuple[str, str]]:
    return [
        ("GET", f"/v1/jobs/{job}"),
        ("GET", f"/v1/jobs/{job}/pages/0"),
        ("GET", f"/v1/jobs/{job}/pages/0/image"),
        ("PATCH", f"/v1/jobs/{job}/pages/0/lines/1"),
    ]
