"""The hostile corpus through the real API and worker: each case beside a good page."""

from __future__ import annotations

import io
import zipfile

import httpx
import pytest

from htrq.settings import Settings
from tests.hostile import corpus, png
from tests.images import page_png
from tests.integration.test_exports_api import valid
from tests.services import Processes, poll_job, service_env

pytestmark = pytest.mark.slow


def _multipart(files: list[tuple[str, bytes]], **fields: str) -> tuple[bytes, str]:
    """A multipart/form-data body written by hand: file names go as raw UTF-8 bytes, control
    characters included (httpx, like browsers, percent-encodes them; other clients do not)."""
    boundary = "htrq-hostile-boundary"
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for filename, data in files:
        quoted = filename.replace('"', "%22").encode("utf-8", "surrogatepass")
        out += f"--{boundary}\r\n".encode()
        out += b'Content-Disposition: form-data; name="files"; filename="' + quoted + b'"\r\n'
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def test_every_hostile_file_fails_alone_and_the_good_page_beside_it_is_read(
    processes: Processes, settings: Settings
) -> None:
    """No 5xx, no job left unfinished; each hostile file gets its code (the whole request
    refused, the page failed at submit or in the worker), or is read with its name made
    safe; the good page of every job is read; exports of every job parse."""
    env = service_env(settings.model_copy(update={"flush_every": 8}))
    processes.worker("hostile", env)
    url = processes.api(env)
    good = ("good.png", page_png("a good page"))
    submitted = []
    for case in corpus():
        body, kind = _multipart([(case.filename, case.data), good], mode="page")
        r = httpx.post(f"{url}/v1/jobs", content=body, headers={"content-type": kind}, timeout=60)
        assert r.status_code < 500, (case.name, r.text)
        if case.expect[0] == "request":
            assert (r.status_code, r.json()["error"]["code"]) == case.expect[1:], case.name
            continue
        assert r.status_code == 201, (case.name, r.text)
        submitted.append((case, r.json()["id"]))

    for case, job_id in submitted:
        poll_job(url, job_id)
        hostile, page = (
            httpx.get(f"{url}/v1/jobs/{job_id}/pages/{i}", timeout=10).json() for i in (0, 1)
        )
        assert page["status"] == "succeeded", (case.name, page)
        kind = case.expect[0]
        if kind == "ok":
            assert hostile["status"] == "succeeded", (case.name, hostile)
            assert hostile["filename"] == case.expect[1], case.name
        else:
            assert hostile["status"] == "failed", (case.name, hostile)
            assert hostile["error"]["code"] == case.expect[1], (case.name, hostile["error"])
            # Failed at submit: never claimed; in the worker: claimed once, never again.
            assert hostile["attempts"] == (0 if kind == "submit" else 1), case.name
        for fmt, xsd in (("alto", "alto-4-4.local.xsd"), ("page", "pagecontent-2019-07-15.xsd")):
            r = httpx.get(f"{url}/v1/jobs/{job_id}/export", params={"format": fmt}, timeout=30)
            assert r.status_code == 200, (case.name, fmt)
            with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
                assert all(valid(zf.read(n), xsd) for n in zf.namelist()), (case.name, fmt)
        assert httpx.post(f"{url}/v1/jobs/{job_id}/retry", timeout=10).json()["requeued"] == 0


def test_a_page_that_breaks_preprocessing_fails_alone_in_the_worker(
    processes: Processes, settings: Settings
) -> None:
    """With the aspect limit raised, a 50 x 100,000 page reaches the worker and makes OpenCV
    raise: it fails with processing_failed, the pages of its group are read."""
    env = service_env(settings.model_copy(update={"max_aspect": 1e7, "flush_every": 4}))
    processes.worker("opencv", env)
    url = processes.api(env)
    files = [
        ("files", ("a.png", page_png("first"), "image/png")),
        ("files", ("tall.png", png((50, 100_000)), "image/png")),
        ("files", ("b.png", page_png("second"), "image/png")),
    ]
    job_id = httpx.post(f"{url}/v1/jobs", files=files, timeout=30).json()["id"]
    job = poll_job(url, job_id)
    assert job["status"] == "partial" and job["counts"]["succeeded"] == 2
    tall = httpx.get(f"{url}/v1/jobs/{job_id}/pages/1", timeout=10).json()
    assert tall["error"]["code"] == "processing_failed" and tall["attempts"] == 1
    assert "/" not in tall["error"]["message"]
