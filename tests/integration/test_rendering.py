"""PDF rendering out of the request threads (``htrq.rendering``): many tenants' exports and
page images at once against a real ``htrq api``, and the renderer's own limits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pypdfium2 as pdfium
import pytest
from sqlalchemy import Engine, select

from htrq.db import make_sessions
from htrq.inputs import render_page
from htrq.models import Tenant
from htrq.rendering import PdfRenderer, RenderBusy, RenderCrashed, RenderTimeout
from htrq.settings import Settings
from tests.finished import Read, finish
from tests.images import page_png
from tests.pdfs import text_pdf
from tests.services import Processes, service_env

#: Pages of the PDF job: A4 pages of text, rendered at the test's 100 DPI.
PAGES = 12
A4 = (595, 842)
A4_AT_100_DPI = (826, 1169)


@pytest.fixture
def two_tenants(engine: Engine) -> Iterator[tuple[str, str]]:
    """Two tenants' keys (committed; the tenants and their jobs removed afterwards)."""
    from htrq.tenants import create_key

    sessions = make_sessions(engine)
    names = [f"render-{x}-{uuid.uuid4().hex[:8]}" for x in "ab"]
    keys = [create_key(sessions, tenant=name)[1] for name in names]
    yield keys[0], keys[1]
    with sessions.begin() as s:
        for tenant in s.scalars(select(Tenant).where(Tenant.name.in_(names))):
            s.delete(tenant)


def _submit(url: str, key: str, name: str, data: bytes, media: str) -> dict[str, Any]:
    r = httpx.post(
        f"{url}/v1/jobs",
        files=[("files", (name, data, media))],
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return r.json()


def _finished_pdf_job(url: str, key: str, engine: Engine) -> str:
    """A job of a :data:`PAGES`-page PDF, submitted through the API (whose inspection counts
    its pages), every page then succeeded with one line."""
    job = _submit(url, key, "letters.pdf", text_pdf([A4] * PAGES), "application/pdf")
    assert len(job["pages"]) == PAGES
    sessions = make_sessions(engine)
    for i in range(PAGES):
        line = Read(f"Dear Sir, line 1 of page {i + 1}", 0.9, (30, 60, 700, 110))
        finish(sessions, uuid.UUID(job["id"]), i, [line], A4_AT_100_DPI)
    return str(job["id"])


@pytest.mark.slow
def test_concurrent_pdf_exports_and_page_images_leave_the_api_serving(
    processes: Processes, settings: Settings, engine: Engine, two_tenants: tuple[str, str]
) -> None:
    """Tenant A's 8 PDF exports and 48 page images of a 12-page PDF at once all succeed,
    the API process lives on, and tenant B's job polls are answered meanwhile."""
    key_a, key_b = two_tenants
    # The renderer is on trial here, not the tenant limits (test_tenant_limits.py): off.
    settings = settings.model_copy(
        update={"auth": "required", "pdf_dpi": 100, "tenant_heavy": 0, "tenant_rate": 0}
    )
    url = processes.api(service_env(settings))
    api = processes.procs[-1]
    job_a = _finished_pdf_job(url, key_a, engine)
    job_b = _submit(url, key_b, "b.png", page_png("tenant b"), "image/png")["id"]
    a, b = ({"Authorization": f"Bearer {k}"} for k in (key_a, key_b))

    def export(_: int) -> httpx.Response:
        return httpx.get(f"{url}/v1/jobs/{job_a}/export?format=pdf", headers=a, timeout=300)

    def image(n: int) -> httpx.Response:
        return httpx.get(f"{url}/v1/jobs/{job_a}/pages/{n % PAGES}/image", headers=a, timeout=300)

    polls: list[tuple[int, float]] = []
    storm_over = threading.Event()

    def poll_b() -> None:
        while not storm_over.is_set():
            started = time.monotonic()
            try:
                status = httpx.get(f"{url}/v1/jobs/{job_b}", headers=b, timeout=60).status_code
            except httpx.HTTPError:
                status = 0  # refused or reset: the API is gone
            polls.append((status, time.monotonic() - started))
            time.sleep(0.1)

    poller = threading.Thread(target=poll_b)
    poller.start()
    # 12 clients, fewer than the API's 16 threads: a thread stays free for tenant B.
    with ThreadPoolExecutor(12) as pool:
        try:
            exports = [pool.submit(export, i) for i in range(8)]
            images = [pool.submit(image, n) for n in range(48)]
            answers = [f.result() for f in exports + images]
        except httpx.HTTPError as exc:
            time.sleep(1)  # time for a crashed process to be reaped
            pytest.fail(f"a request found no API ({exc!r}; API exit status {api.poll()})")
        finally:
            storm_over.set()
            poller.join()

    assert api.poll() is None, "the API process died"
    for r in answers[:8]:
        assert r.status_code == 200, r.text
        assert len(pdfium.PdfDocument(r.content)) == PAGES
    for r in answers[8:]:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
    assert polls and all(status == 200 for status, _ in polls), polls
    assert httpx.get(f"{url}/v1/jobs/{job_b}", headers=b, timeout=10).status_code == 200


@pytest.mark.slow
def test_a_pdf_render_past_its_time_is_503_with_retry_after(
    processes: Processes, settings: Settings, engine: Engine, two_tenants: tuple[str, str]
) -> None:
    """With no time to render in, a PDF page image and export answer 503 render_too_slow (or
    render_busy) with Retry-After; the API lives on and a PNG page is still served."""
    key, _ = two_tenants
    settings = settings.model_copy(update={"auth": "required", "pdf_dpi": 100})
    url = processes.api(service_env(settings))
    job = _finished_pdf_job(url, key, engine)
    png_job = _submit(url, key, "p.png", page_png("a png page"), "image/png")
    finish(make_sessions(engine), uuid.UUID(png_job["id"]), 0, [], (160, 32))
    processes.close()  # the same database, blobs and keys, now with no time to render
    slow = settings.model_copy(update={"pdf_render_seconds": 0.001})
    url = processes.api(service_env(slow))
    headers = {"Authorization": f"Bearer {key}"}
    for path in (f"/v1/jobs/{job}/pages/0/image", f"/v1/jobs/{job}/export?format=pdf"):
        r = httpx.get(f"{url}{path}", headers=headers, timeout=60)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] in ("render_too_slow", "render_busy")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert processes.procs[-1].poll() is None
    r = httpx.get(f"{url}/v1/jobs/{png_job['id']}/pages/0/image", headers=headers, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


@pytest.fixture
def renderer() -> Iterator[PdfRenderer]:
    """A renderer of one helper process, stopped afterwards."""
    r = PdfRenderer(processes=1, seconds=30, wait=0.5)
    yield r
    r.close()


def _helper(renderer: PdfRenderer) -> int:
    """The renderer's one helper, started by a render and now idle."""
    renderer.render(text_pdf([A4]), 0, dpi=50)
    (pid,) = renderer.pids()
    return pid


def test_a_stuck_helper_is_killed_past_its_time_and_replaced(renderer: PdfRenderer) -> None:
    """A helper that does not answer within the time given is killed (render_too_slow), and
    the next render starts a new one that renders what PDFium renders in process."""
    pid = _helper(renderer)
    os.kill(pid, signal.SIGSTOP)  # it can read nothing and answer nothing
    with pytest.raises(RenderTimeout) as exc:
        renderer.render(text_pdf([A4]), 0, dpi=50, seconds=0.5)
    assert exc.value.code == "render_too_slow" and exc.value.retry_after >= 1
    assert not os.path.exists(f"/proc/{pid}") and renderer.pids() == []
    pdf = text_pdf([A4, A4])
    again = renderer.render(pdf, 1, dpi=50)
    assert again.tobytes() == render_page(pdf, 1, dpi=50).tobytes()
    assert renderer.pids() not in ([], [pid])


def test_a_helper_that_dies_mid_render_fails_only_its_own_caller(
    renderer: PdfRenderer,
) -> None:
    """While the one helper is held, another caller gets render_busy after its wait; when
    the helper dies, its caller gets render_failed and the next render works."""
    pid = _helper(renderer)
    os.kill(pid, signal.SIGSTOP)
    outcome: list[BaseException] = []

    def held() -> None:
        try:
            renderer.render(text_pdf([A4]), 0, dpi=50)
        except BaseException as exc:  # what the caller got is the result
            outcome.append(exc)

    caller = threading.Thread(target=held)
    caller.start()
    time.sleep(0.2)  # the request is in the stopped helper's pipe
    with pytest.raises(RenderBusy) as busy:
        renderer.render(text_pdf([A4]), 0, dpi=50)
    assert busy.value.code == "render_busy"
    os.kill(pid, signal.SIGKILL)
    caller.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], RenderCrashed), outcome
    assert outcome[0].code == "render_failed"
    pdf = text_pdf([A4])
    assert renderer.render(pdf, 0, dpi=50).tobytes() == render_page(pdf, 0, dpi=50).tobytes()


@pytest.mark.slow  # seconds: two Python processes start
@pytest.mark.parametrize(
    "render",
    [
        "from htrq.rendering import pdf_renderer\n"
        "from htrq.settings import Settings\n"
        "pdf_renderer(Settings()).render(pdf, 0, dpi=50)",
        "from worker.recognition.render import render_pdf_limited\n"
        "render_pdf_limited(pdf, 0, dpi=50, max_pixels=10**8, max_aspect=50, seconds=30)",
    ],
    ids=["api", "worker"],
)
def test_a_process_that_rendered_a_pdf_exits_leaving_no_helper_running(render: str) -> None:
    """The helper an API or worker process kept for its next PDF is stopped and reaped when
    that process exits: Python's development mode reports no subprocess still running."""
    code = f"pdf = bytes.fromhex({text_pdf([A4]).hex()!r})\n{render}\n"
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "ResourceWarning" not in done.stderr, done.stderr
