from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from api.main import create_app
from htrq.db import make_sessions
from htrq.models import Job
from htrq.queue import page_queue
from htrq.settings import Settings
from htrq.tenants import default_tenant
from tests.images import page_png
from tests.pdfs import broken_pdf


@pytest.fixture
def client(settings: Settings, broker_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _waiting(settings: Settings, engine: Engine) -> int:
    """Messages on the default tenant's queue of the default model (where these jobs go)."""
    queue = page_queue(settings, model=None, tenant_id=default_tenant(make_sessions(engine)))
    return int(redis.Redis.from_url(settings.broker_url or "").llen(queue))


def _files(*names: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (n, page_png(n), "image/png")) for n in names]


def test_post_creates_a_job_and_sends_one_message_per_page(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    """201 with Location and the job resource; each page id is on the Redis queue."""
    r = client.post("/v1/jobs", files=_files("a.png", "b.png"), data={"external_id": "x-1"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["external_id"] == "x-1" and job["mode"] == "page"
    assert [(p["index"], p["status"]) for p in job["pages"]] == [(0, "queued"), (1, "queued")]
    assert _waiting(settings, engine) == 2
    assert client.get(f"/v1/jobs/{job['id']}").json() == job


def test_repeats_answer_200_with_the_same_job(client: TestClient) -> None:
    """Idempotency-Key or external_id make a repeat return the first job with 200."""
    key = {"Idempotency-Key": "idem-api-1"}
    first = client.post("/v1/jobs", files=_files("a.png"), headers=key)
    again = client.post("/v1/jobs", files=_files("a.png"), headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", files=_files("zzz.png"), headers=key)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    ext = {"external_id": "dms-api-1"}
    one = client.post("/v1/jobs", files=_files("a.png"), data=ext)
    two = client.post("/v1/jobs", files=_files("a.png"), data=ext)
    assert (one.status_code, two.status_code, two.json()["id"]) == (201, 200, one.json()["id"])


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        ([("files", ("t.txt", b"hello", "text/plain"))], {}, 415, "unsupported_format"),
        ([("files", ("e.png", b"", "image/png"))], {}, 422, "empty_file"),
        ([("files", ("s.pdf", broken_pdf(), "application/pdf"))], {}, 422, "invalid_pdf"),
        ([], {"external_id": "no-files"}, 422, "no_files"),
        ([("file", ("a.png", page_png(), "image/png"))], {}, 422, "no_files"),
        ([("files", ("a.png", page_png(), "image/png"))], {"mode": "word"}, 422, "invalid_request"),
    ],
)
def test_bad_uploads_get_4xx_with_a_code(
    client: TestClient,
    files: list[tuple[str, tuple[str, bytes, str]]],
    data: dict[str, str],
    status: int,
    code: str,
) -> None:
    """A request without a readable file, or with bad fields, is refused with a JSON code."""
    r = client.post("/v1/jobs", files=files, data=data)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_a_broken_pdf_among_images_is_a_failed_page_not_a_refusal(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    """201; the PDF's page is failed with invalid_pdf at once, only the images are queued."""
    files = _files("a.png")
    files.append(("files", ("scan.pdf", broken_pdf(), "application/pdf")))
    files += _files("b.png")
    r = client.post("/v1/jobs", files=files)
    assert r.status_code == 201, r.text
    job = r.json()
    assert [(p["index"], p["status"]) for p in job["pages"]] == [
        (0, "queued"),
        (1, "failed"),
        (2, "queued"),
    ]
    assert job["counts"] == {"queued": 2, "running": 0, "succeeded": 0, "failed": 1}
    assert _waiting(settings, engine) == 2
    page = client.get(f"/v1/jobs/{job['id']}/pages/1").json()
    assert (page["status"], page["filename"], page["attempts"]) == ("failed", "scan.pdf", 0)
    assert page["error"]["code"] == "invalid_pdf" and page["error"]["message"]


def test_files_over_the_size_limit_get_413(settings: Settings, broker_url: str) -> None:
    """An upload over HTRQ_MAX_UPLOAD_BYTES is refused with too_large."""
    app = create_app(settings.model_copy(update={"max_upload_bytes": 50}))
    with TestClient(app) as c:
        r = c.post("/v1/jobs", files=_files("a.png"))
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000"),
        ("GET", "/v1/jobs/not-a-uuid"),
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/pages/0"),
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/pages/-1"),
        # Beyond the INTEGER column: the database would raise instead of finding nothing.
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/pages/99999999999999999999"),
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/pages/2147483648/export"),
        ("POST", "/v1/jobs/00000000-0000-0000-0000-000000000000/retry"),
        ("GET", "/v1/nothing-here"),
    ],
)
def test_unknown_ids_get_404_json(client: TestClient, method: str, path: str) -> None:
    """Unknown or malformed ids answer 404 with a JSON error, never 500."""
    r = client.request(method, path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_page_resource_of_a_queued_page(client: TestClient) -> None:
    """A page not yet read has no text, no lines, no error and no attempts; bad index is 404."""
    job = client.post("/v1/jobs", files=_files("a.png")).json()
    page = client.get(f"/v1/jobs/{job['id']}/pages/0").json()
    assert page["status"] == "queued" and page["id"] == job["pages"][0]["id"]
    assert (page["text"], page["lines"], page["error"], page["attempts"]) == (None, [], None, 0)
    assert client.get(f"/v1/jobs/{job['id']}/pages/1").status_code == 404
    r = client.post(f"/v1/jobs/{job['id']}/retry")
    assert r.status_code == 200 and r.json()["requeued"] == 0


def test_probes_and_docs(client: TestClient) -> None:
    """healthz, readyz (database and broker up), /docs and /openapi.json answer 200."""
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"database": True, "broker": True}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/pages/{index}",
        "/v1/jobs/{job_id}/retry",
    } <= set(paths)


@pytest.mark.slow  # seconds: waits on timeouts or reads many pages
def test_readyz_is_503_when_the_broker_is_down(settings: Settings) -> None:
    """readyz names the dependency that cannot be reached."""
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and r.json() == {"database": True, "broker": False}


@pytest.mark.slow  # seconds: waits on timeouts or reads many pages
def test_a_broker_outage_still_accepts_the_job(settings: Settings) -> None:
    """With Redis down the job is stored and queued (the sweeper re-sends it later), not a 500."""
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as c:
        r = c.post("/v1/jobs", files=_files("a.png"))
        assert r.status_code == 201, r.text
        job = c.get(r.headers["location"]).json()
    assert job["status"] == "queued" and len(job["pages"]) == 1


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_uploads_the_store_cannot_take_get_503_and_no_job(
    unreachable_s3_settings: Settings, broker_url: str, engine: Engine
) -> None:
    """A store that is down answers 503 storage_unavailable, naming no endpoint; nothing is
    written or queued, so the client can send the same request again."""
    with TestClient(create_app(unreachable_s3_settings), raise_server_exceptions=False) as c:
        r = c.post("/v1/jobs", files=_files("a.png"), data={"external_id": "store-down"})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "storage_unavailable"
    endpoint = unreachable_s3_settings.s3_endpoint_url
    assert endpoint and endpoint.split("//")[1] not in r.text and "htrq-test" not in r.text
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(Job.external_id == "store-down")) == 0
    assert _waiting(unreachable_s3_settings, engine) == 0


def test_metrics_show_the_work_waiting_and_in_flight(client: TestClient, engine) -> None:
    """Queued and running pages, expired leases, the oldest wait and the broker queue."""
    from uuid import UUID

    from sqlalchemy import delete

    from htrq.db import make_sessions, session_scope
    from htrq.jobs.claims import claim_pages
    from htrq.models import Job

    sessions = make_sessions(engine)  # commits for real, as the API does: other tests' pages
    before = _samples(client.get("/metrics").text)  # in this database count too
    job = client.post("/v1/jobs", files=_files("a.png", "b.png", "c.png")).json()
    try:
        with session_scope(sessions) as s:  # a worker claimed one page and died long ago
            claim_pages(s, [UUID(job["pages"][0]["id"])], lease_seconds=-60)
        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        after = _samples(r.text)
    finally:
        with session_scope(sessions) as s:
            s.execute(delete(Job).where(Job.id == UUID(job["id"])))

    def grew(name: str, *labels: tuple[str, str]) -> float:
        return after[(name, labels)] - before[(name, labels)]

    assert grew("htrq_pages", ("status", "queued")) == 2
    assert grew("htrq_pages", ("status", "running")) == 1
    assert grew("htrq_expired_leases") == 1
    assert after[("htrq_broker_queue_messages", ())] == 3  # Redis is this test's own
    assert after[("htrq_oldest_queued_page_seconds", ())] >= 0
    assert after[("htrq_up", (("component", "database"),))] == 1
    assert after[("htrq_up", (("component", "broker"),))] == 1


def test_metrics_report_an_unreachable_database_instead_of_failing(
    settings: Settings, broker_url: str
) -> None:
    """A scrape while PostgreSQL is unreachable answers 200 with htrq_up{database} 0."""
    gone = settings.model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none"}
    )
    with TestClient(create_app(gone)) as c:
        r = c.get("/metrics")
    assert r.status_code == 200
    m = _samples(r.text)
    assert m[("htrq_up", (("component", "database"),))] == 0
    assert m[("htrq_up", (("component", "broker"),))] == 1
    assert not any(name == "htrq_pages" for name, _ in m)


def test_docs_load_without_internet(client: TestClient) -> None:
    """/docs names only assets the API serves itself, and each of them answers 200."""
    import re

    html = client.get("/docs").text
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html)
    assert assets and all(a.startswith("/static/") for a in assets), assets
    for a in assets:
        assert client.get(a).status_code == 200, a
    assert client.get("/redoc").status_code == 404
