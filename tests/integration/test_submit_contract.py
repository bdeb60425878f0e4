"""Requests the API used to answer wrongly (issue 26, items 10, 11, 15, 16, 17), on the
service's own app over the real database and broker: each now gets the answer its
documentation and the OpenAPI document give."""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from htrq.jobs.claims import claim_pages
from htrq.models import Page, utcnow
from htrq.settings import Settings
from tests.conftest import S3Server
from tests.images import page_png
from tests.pdfs import text_pdf


@pytest.fixture
def client(settings: Settings, broker_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _png(name: str = "p.png", body: bytes | None = None) -> list[tuple[str, tuple]]:
    return [("files", (name, body or page_png(str(uuid.uuid4())), "image/png"))]


@pytest.mark.parametrize("url", ["http://example.com:99999/", "http://[::1/", "http://h:x/"])
def test_callback_urls_whose_host_or_port_cannot_be_read_are_422(
    client: TestClient, url: str
) -> None:
    """A port out of range or a broken IPv6 host is 422 invalid_callback_url, not a 500."""
    r = client.post("/v1/jobs", files=_png(), data={"callback_url": url})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_callback_url"


@pytest.mark.parametrize("length", [244, 250, 255])
def test_a_long_external_id_without_a_key_makes_one_job(client: TestClient, length: int) -> None:
    """An external_id of 244 to 255 characters (its derived key used to overflow the
    column: a 500) makes a job, and its repeat answers that job with 200."""
    external_id = "x" * (length - 8) + uuid.uuid4().hex[:8]
    files = _png()
    first = client.post("/v1/jobs", files=files, data={"external_id": external_id})
    assert first.status_code == 201, first.text
    again = client.post("/v1/jobs", files=files, data={"external_id": external_id})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]


def test_empty_optional_fields_are_fields_not_given(client: TestClient) -> None:
    """Empty callback_url, model and external_id (an HTML form's empty inputs; valid by the
    OpenAPI document) are taken as not given, not refused."""
    r = client.post(
        "/v1/jobs", files=_png(), data={"callback_url": "", "model": "", "external_id": ""}
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["callback_url"] is None and job["external_id"] is None


def test_a_body_cut_before_its_closing_boundary_is_400(client: TestClient) -> None:
    """A multipart body that ends inside its file part is 400 invalid_request (it used to
    be read as a form without files: 422 no_files)."""
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="p.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + page_png()[:100]
    )
    r = client.post(
        "/v1/jobs", content=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert "closing boundary" in r.json()["error"]["message"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds almost none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def test_a_ten_gigapixel_image_is_refused_naming_the_setting(client: TestClient) -> None:
    """A 100,000 x 100,000 PNG is 413 too_large naming HTRQ_MAX_PIXELS, without Pillow's
    words about decompression bombs."""
    r = client.post("/v1/jobs", files=_png("huge.png", _png_header(100_000, 100_000)))
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "too_large" and "HTRQ_MAX_PIXELS" in error["message"]
    assert "bomb" not in error["message"].lower() and "DOS" not in error["message"]


def test_a_pdf_page_too_large_at_the_worker_s_dpi_is_refused_at_submit(
    client: TestClient, settings: Settings
) -> None:
    """A 200 x 200 inch PDF page (60,000 x 60,000 pixels at 300 dpi) is refused at submit
    with too_large naming the page, as documented, not accepted to fail later."""
    huge = text_pdf([(200 * 72, 200 * 72)])
    r = client.post("/v1/jobs", files=[("files", ("big.pdf", huge, "application/pdf"))])
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "too_large"
    assert "200x200 inches" in error["message"] and "HTRQ_MAX_PIXELS" in error["message"]
    ordinary = text_pdf([(612, 792)])
    ok = client.post("/v1/jobs", files=[("files", ("letter.pdf", ordinary, "application/pdf"))])
    assert ok.status_code == 201, ok.text


def _fail_all(engine_sessions: sessionmaker[Session], job_id: str, code: str) -> None:
    with engine_sessions.begin() as s:
        s.execute(
            update(Page)
            .where(Page.job_id == uuid.UUID(job_id))
            .values(status="failed", attempts=1, error_code=code, error_message="bad")
        )


@pytest.fixture
def live_sessions(client: TestClient) -> sessionmaker[Session]:
    """The app's own sessions (committed rows, as a worker would leave them)."""
    return client.app.state.sessions  # type: ignore[attr-defined, no-any-return]


def test_exports_of_a_job_whose_pages_all_failed_are_409(
    client: TestClient, live_sessions: sessionmaker[Session]
) -> None:
    """pdf, alto and page of a finished job with no succeeded page are 409
    no_page_succeeded (not an empty PDF or zip with 200); json still answers each error."""
    job = client.post("/v1/jobs", files=_png()).json()
    _fail_all(live_sessions, job["id"], "invalid_image")
    for fmt in ("pdf", "alto", "page"):
        r = client.get(f"/v1/jobs/{job['id']}/export", params={"format": fmt})
        assert r.status_code == 409, (fmt, r.status_code)
        assert r.json()["error"]["code"] == "no_page_succeeded"
    r = client.get(f"/v1/jobs/{job['id']}/export", params={"format": "json"})
    assert r.status_code == 200 and r.json()["pages"][0]["error"]["code"] == "invalid_image"


def test_a_retry_that_requeues_nothing_says_why(
    client: TestClient, live_sessions: sessionmaker[Session]
) -> None:
    """POST /retry of a job whose pages failed for their input answers requeued 0 with a
    reason naming the codes; of a job with no failed page, a reason saying so."""
    waiting = client.post("/v1/jobs", files=_png()).json()
    r = client.post(f"/v1/jobs/{waiting['id']}/retry").json()
    assert r["requeued"] == 0 and "no page of the job has failed" in r["reason"]
    job = client.post("/v1/jobs", files=_png()).json()
    _fail_all(live_sessions, job["id"], "invalid_image")
    r = client.post(f"/v1/jobs/{job['id']}/retry").json()
    assert r["requeued"] == 0
    assert "invalid_image (1)" in r["reason"] and "new job" in r["reason"]


def test_a_retried_job_is_queued_until_a_worker_claims_one_of_its_pages(
    client: TestClient, live_sessions: sessionmaker[Session]
) -> None:
    """Right after a retry the job (and the list) says queued, not running with no page
    running; once a worker claims the page, running."""
    files = [*_png("a.png"), *_png("b.png")]
    job = client.post("/v1/jobs", files=files).json()
    jid = uuid.UUID(job["id"])
    with live_sessions.begin() as s:
        pages = s.scalars(select(Page).where(Page.job_id == jid).order_by(Page.index)).all()
        pages[0].status, pages[0].attempts, pages[0].finished_at = "succeeded", 1, utcnow()
        pages[1].status, pages[1].attempts, pages[1].error_code = "failed", 1, "model_error"
        pages[1].finished_at = utcnow()
    assert client.post(f"/v1/jobs/{jid}/retry").json()["requeued"] == 1
    assert client.get(f"/v1/jobs/{jid}").json()["status"] == "queued"
    listed = client.get("/v1/jobs", params={"status": "queued"}).json()["jobs"]
    assert str(jid) in [j["id"] for j in listed]
    with live_sessions.begin() as s:
        claim_pages(s, [pages[1].id], lease_seconds=60)
    assert client.get(f"/v1/jobs/{jid}").json()["status"] == "running"
    listed = client.get("/v1/jobs", params={"status": "running"}).json()["jobs"]
    assert str(jid) in [j["id"] for j in listed]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/jobs/{job}", "GET, HEAD, DELETE"),
        ("DELETE", "/v1/jobs", "GET, HEAD, POST"),
        ("OPTIONS", "/v1/jobs/{job}/retry", "POST"),
    ],
)
def test_405_lists_every_method_of_the_resource(
    client: TestClient, method: str, path: str, allowed: str
) -> None:
    """A method the resource does not have is 405 with Allow naming all those it has (RFC
    9110), not only those of the first route on the path."""
    r = client.request(method, path.format(job=uuid.uuid4()))
    assert r.status_code == 405, r.text
    assert r.headers["Allow"] == allowed
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_a_submit_that_fails_after_storing_leaves_no_file_in_the_bucket(
    s3_settings: Settings, s3_server: S3Server, broker_url: str
) -> None:
    """When the database refuses the job after its file went to the S3 store, the file is
    removed: nothing in the bucket that no page refers to (DELETE and retention never would
    find it). A file another job uses stays."""
    prefix = s3_settings.storage_url.split("/", 3)[3]  # type: ignore[union-attr]
    kept = page_png("kept")
    with TestClient(create_app(s3_settings), raise_server_exceptions=False) as c:
        sessions = c.app.state.sessions  # type: ignore[attr-defined]
        assert c.post("/v1/jobs", files=_png("kept.png", kept)).status_code == 201
        with sessions.begin() as s:
            s.execute(
                text(
                    "CREATE FUNCTION htrq_test_refuse() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.filename LIKE 'refused%' THEN RAISE EXCEPTION 'refused'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            s.execute(
                text(
                    "CREATE TRIGGER htrq_test_refuse BEFORE INSERT ON pages "
                    "FOR EACH ROW EXECUTE FUNCTION htrq_test_refuse()"
                )
            )
        try:
            before = set(s3_server.objects(prefix))
            files = [*_png("refused-new.png"), *_png("refused-shared.png", kept)]
            r = c.post("/v1/jobs", files=files)
            assert r.status_code == 500
        finally:
            with sessions.begin() as s:
                s.execute(text("DROP TRIGGER htrq_test_refuse ON pages"))
                s.execute(text("DROP FUNCTION htrq_test_refuse()"))
    assert set(s3_server.objects(prefix)) == before
    assert len(before) == 1  # the kept job's file, used by both requests, is still there
