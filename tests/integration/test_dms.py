"""What a DMS does besides submitting: list its jobs, delete them, retain them for a while,
and talk to the API through the Python client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update

from api.main import create_app
from htrq.client import ApiError, Client
from htrq.db import make_sessions
from htrq.models import Job, Page, Tenant, utcnow
from htrq.settings import Settings
from htrq.storage import open_store
from htrq.tenants import create_key
from tests.images import page_png
from tests.services import Processes, service_env
from worker.serving.sweeper import purge_expired


@pytest.fixture
def api(settings: Settings, broker_url: str, engine: Engine) -> Iterator[tuple]:
    """The API app with keys required, a tenant of its own (removed afterwards)."""
    sessions = make_sessions(engine)
    name = f"dms-{uuid.uuid4().hex[:8]}"
    _, key = create_key(sessions, tenant=name)
    app = create_app(settings.model_copy(update={"auth": "required"}))
    with TestClient(app, raise_server_exceptions=True) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client, settings
    with sessions.begin() as s:
        s.delete(s.scalars(select(Tenant).where(Tenant.name == name)).one())


def _post(client: TestClient, text: str, **data: str) -> dict:
    r = client.post(
        "/v1/jobs", files=[("files", ("p.png", page_png(text), "image/png"))], data=data
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_the_list_is_newest_first_filtered_and_paged(api: tuple, engine: Engine) -> None:
    """Keyset pages of 2 walk every job once, newest first; status, external_id and
    created_after filter (ISO 8601 only: a bare number is a 422, not Unix seconds); a forged
    cursor is a 422."""
    client, _ = api
    made = [_post(client, f"job {i}", external_id=f"ext-{i}")["id"] for i in range(5)]
    with make_sessions(engine).begin() as s:  # the first two finish: one failed, one not
        s.execute(update(Page).where(Page.job_id == made[0]).values(status="succeeded", attempts=1))
        s.execute(update(Page).where(Page.job_id == made[1]).values(status="failed", attempts=1))
    seen, cursor = [], None
    while True:
        r = client.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        seen += [j["id"] for j in r.json()["jobs"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert seen == made[::-1]
    by = lambda **q: [j["id"] for j in client.get("/v1/jobs", params=q).json()["jobs"]]  # noqa: E731
    assert by(status="succeeded") == [made[0]]
    assert by(status="failed") == [made[1]]
    assert by(status="queued") == made[2:][::-1]
    assert by(external_id="ext-3") == [made[3]]
    first = client.get(f"/v1/jobs/{made[2]}").json()["created_at"]
    assert by(created_after=first) == made[3:][::-1]
    for number in ("-176", "1700000000", "1.5"):
        r = client.get("/v1/jobs", params={"created_after": number})
        assert r.status_code == 422 and "ISO 8601" in r.text, r.text
    bad = client.get("/v1/jobs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_cursor"


def test_delete_removes_rows_and_the_bytes_no_other_job_uses(
    api: tuple, engine: Engine, tmp_path: Path
) -> None:
    """204; the job, its pages and lines are gone, its own file is deleted from storage, and
    a file another job also holds stays; the job is then 404."""
    client, settings = api
    storage = open_store(settings)
    mine = _post(client, "only in the deleted job")
    shared_a, shared_b = _post(client, "in both"), _post(client, "in both")
    with make_sessions(engine)() as s:
        keys = {
            j["id"]: s.scalars(select(Page.blob_key).where(Page.job_id == j["id"])).one()
            for j in (mine, shared_a)
        }
    assert storage.get(keys[mine["id"]]) == page_png("only in the deleted job")
    for job in (mine, shared_a):
        r = client.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 204 and r.content == b""
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    with make_sessions(engine)() as s:
        for job in (mine, shared_a):
            assert s.get(Job, uuid.UUID(job["id"])) is None
            assert s.scalar(select(func.count()).where(Page.job_id == job["id"])) == 0
    with pytest.raises(LookupError):
        storage.get(keys[mine["id"]])
    assert storage.get(keys[shared_a["id"]]) == page_png("in both")  # shared_b holds it
    assert client.get(f"/v1/jobs/{shared_b['id']}").status_code == 200


def test_retention_purges_jobs_finished_too_long_ago(api: tuple, engine: Engine) -> None:
    """With HTRQ_RETENTION_DAYS, jobs finished before then are deleted with their files;
    newer and unfinished ones stay; unset, nothing is purged."""
    client, settings = api
    old, new, open_ = (_post(client, t) for t in ("old", "new", "open"))
    with make_sessions(engine).begin() as s:
        for job, age in ((old, 40), (new, 1)):
            s.execute(
                update(Job)
                .where(Job.id == job["id"])
                .values(finished_at=utcnow() - timedelta(days=age))
            )
    sessions, storage = make_sessions(engine), open_store(settings)
    assert purge_expired(sessions=sessions, storage=storage, settings=settings) == 0
    kept = settings.model_copy(update={"retention_days": 30})
    assert purge_expired(sessions=sessions, storage=storage, settings=kept) >= 1
    assert client.get(f"/v1/jobs/{old['id']}").status_code == 404
    assert client.get(f"/v1/jobs/{new['id']}").status_code == 200
    assert client.get(f"/v1/jobs/{open_['id']}").status_code == 200


class DropFirstAnswer(httpx.HTTPTransport):
    """Sends each request for real, but the first answer to a POST is lost on its way back:
    what a client sees when the network drops after the server has committed."""

    def __init__(self) -> None:
        super().__init__()
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST":
            self.posts += 1
            if self.posts == 1:
                response.close()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response


@pytest.mark.slow
def test_the_client_submits_waits_exports_and_retries_without_duplicates(
    processes: Processes, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """Against a real API and worker with keys on: a submit whose answer is lost is sent
    again with the same Idempotency-Key and makes one job; wait, pages, export, list and
    delete work; a bad key raises ApiError 401; `htrq submit --wait` prints the text."""
    import subprocess
    import sys

    settings = settings.model_copy(update={"auth": "required"})
    env = service_env(settings)
    processes.worker("client", env)
    url = processes.api(env)
    sessions = make_sessions(engine)
    tenant = f"client-{uuid.uuid4().hex[:8]}"
    _, key = create_key(sessions, tenant=tenant)
    try:
        page = tmp_path / "letter.png"
        page.write_bytes(page_png("Dear Sir"))
        transport = DropFirstAnswer()
        with Client(url, key, transport=transport, backoff=0.1) as client:
            job = client.submit([page], external_id="client-1")
            assert transport.posts == 2  # sent twice ...
            with sessions() as s:  # ... one job
                n = s.scalar(
                    select(func.count()).select_from(Job).join(Tenant).where(Tenant.name == tenant)
                )
            assert n == 1
            done = client.wait(job.id, timeout=120, interval=0.3)
            assert done.status == "succeeded"
            (p,) = client.pages(job.id)
            assert client.export(job.id, "txt").decode() == p.text
            assert [j.id for j in client.iter_jobs(external_id="client-1")] == [job.id]
            client.delete(job.id)
            with pytest.raises(ApiError) as exc:
                client.get(job.id)
            assert exc.value.status == 404
        with Client(url, "htrq_wrong", backoff=0.01) as bad, pytest.raises(ApiError) as exc:
            bad.list()
        assert (exc.value.status, exc.value.code) == (401, "unauthorized")
        cli = subprocess.run(
            [sys.executable, "-m", "htrq.cli", "submit", str(page), "--url", url, "--key", key,
             "--wait", "--poll", "0.3"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr[-2000:]
        assert cli.stdout.strip() != "" or "succeeded" in cli.stderr
    finally:
        with sessions.begin() as s:
            s.delete(s.scalars(select(Tenant).where(Tenant.name == tenant)).one())


def test_the_pdf_export_is_searchable(api: tuple, engine: Engine) -> None:
    """The job's pdf export holds one page per succeeded page, the page image drawn, and a
    text extractor (PDFium) gets each line's text back, in order; the page export too."""
    import json as json_

    import pypdfium2 as pdfium

    from htrq.jobs.claims import claim_pages, write_result
    from worker.recognition.pipeline import LineOutput

    client, _ = api
    job = _post(client, "Dear Mrs. Stanford")
    lines = [
        LineOutput("Dear Mrs. Stanford,", 0.95, (4, 2, 150, 14)),
        LineOutput("Grüße aus Köln — 1905", 0.6, (4, 16, 150, 30)),
    ]
    with make_sessions(engine).begin() as s:
        (claim,) = claim_pages(s, [uuid.UUID(job["pages"][0]["id"])], lease_seconds=60)
        write_result(
            s, claim, text="\n".join(ln.text for ln in lines), confidence=0.8, lines=lines,
            model="m", processing_ms=1, size=(160, 32),
        )  # fmt: skip
    for path in (f"/v1/jobs/{job['id']}/export", f"/v1/jobs/{job['id']}/pages/0/export"):
        r = client.get(path, params={"format": "pdf"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
        pdf = pdfium.PdfDocument(r.content)
        assert len(pdf) == 1
        page = pdf[0]
        text = page.get_textpage().get_text_range()
        words = " ".join(text.split())
        assert "Dear Mrs. Stanford," in words and "Grüße aus Köln — 1905" in words
        assert words.index("Dear") < words.index("Grüße")
        assert len(list(page.get_objects())) >= 2  # the image and the text
    assert json_.loads(client.get(f"/v1/jobs/{job['id']}/export?format=json").text)
