from __future__ import annotations

import json
import zipfile
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from sqlalchemy import Engine, select

from htrq.cli import main
from htrq.exports.formats import ALTO_NS, PAGE_NS
from htrq.models import Page
from tests.images import corrupt_png, page_png
from tests.services import free_port


@pytest.fixture
def embedded_env(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    """No server configured: transcribe must fall back to SQLite and an in-process queue."""
    for name in (
        "HTRQ_DATABASE_URL",
        "HTRQ_BROKER_URL",
        "HTRQ_STORAGE_DIR",
        "HTRQ_STORAGE_URL",
        "HTRQ_S3_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTRQ_MODEL", str(tiny_model))
    monkeypatch.setenv("HTRQ_NUM_BEAMS", "1")
    monkeypatch.setenv("HTRQ_MAX_NEW_TOKENS", "6")
    monkeypatch.setenv("HTRQ_FLUSH_EVERY", "2")


@pytest.mark.usefixtures("embedded_env")
def test_transcribe_prints_page_resources_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """transcribe runs jobs, queue and batch code in-process and prints the API's page shape."""
    files = []
    for i, data in enumerate([page_png("one"), page_png("two"), corrupt_png()]):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(data)
    code = main(["transcribe", *map(str, files), "--format", "json"])
    out = capsys.readouterr()
    pages = json.loads(out.out)
    assert code == 1  # one page failed
    assert [p["index"] for p in pages] == [0, 1, 2]
    assert [p["status"] for p in pages] == ["succeeded", "succeeded", "failed"]
    assert pages[2]["error"]["code"] == "invalid_image"
    assert all(len(p["lines"]) == 1 and 0 <= p["confidence"] <= 1 for p in pages[:2])
    assert "3/3 pages" in out.err  # progress goes to stderr


@pytest.mark.usefixtures("embedded_env")
def test_transcribe_without_a_database_keeps_blobs_to_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With its throwaway database, transcribe stores blobs in a throwaway directory too,
    not in the store HTRQ_STORAGE_URL names (here one that is down)."""
    monkeypatch.setenv("HTRQ_STORAGE_URL", "s3://htrq-test/blobs")
    monkeypatch.setenv("HTRQ_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    page = tmp_path / "page.png"
    page.write_bytes(page_png())
    assert main(["transcribe", str(page)]) == 0
    assert "## page.png (confidence " in capsys.readouterr().out


@pytest.mark.slow  # seconds: waits on timeouts or reads many pages
@pytest.mark.usefixtures("embedded_env")
def test_transcribe_text_output_and_refused_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text output has a header per file; an unreadable file is a failed page (exit 1), and
    with no readable file at all transcribe stops with the code (exit 2)."""
    good = tmp_path / "good.png"
    good.write_bytes(page_png())
    assert main(["transcribe", str(good)]) == 0
    assert "## good.png (confidence " in capsys.readouterr().out
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    assert main(["transcribe", str(good), str(bad)]) == 1
    out = capsys.readouterr()
    assert "## good.png (confidence " in out.out
    assert "## notes.txt: failed: unsupported_format" in out.out
    assert "2/2 pages" in out.err
    assert main(["transcribe", str(bad)]) == 2
    assert "unsupported_format" in capsys.readouterr().err


@pytest.mark.slow  # seconds: waits on timeouts or reads many pages
@pytest.mark.usefixtures("embedded_env")
def test_transcribe_writes_the_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--format txt / alto / page: one page prints its export; several make a zip with -o."""
    one = tmp_path / "one.png"
    one.write_bytes(page_png("one"))
    two = tmp_path / "two.png"
    two.write_bytes(page_png("two"))
    assert main(["transcribe", str(one), "--format", "alto"]) == 0
    alto = ET.fromstring(capsys.readouterr().out)
    (page,) = alto.iter(f"{{{ALTO_NS}}}Page")
    assert (page.get("WIDTH"), page.get("HEIGHT")) == ("160", "32")  # the page resource's size

    assert main(["transcribe", str(one), str(two), "--format", "page"]) == 2
    assert "--output" in capsys.readouterr().err
    out = tmp_path / "pages.zip"
    assert main(["transcribe", str(one), str(two), "--format", "page", "-o", str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["page-0001.xml", "page-0002.xml"]
        root = ET.fromstring(zf.read("page-0002.xml"))
    (pg,) = root.iter(f"{{{PAGE_NS}}}Page")
    assert pg.get("imageFilename") == "two.png"

    txt = tmp_path / "all.txt"
    assert main(["transcribe", str(one), str(two), "--format", "txt", "-o", str(txt)]) == 0
    assert txt.read_text().count("\f") == 1  # a form feed between the two pages


def test_a_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI turns a wrong HTRQ_* value into a one-line message and exit status 2."""
    monkeypatch.setenv("HTRQ_LEASE_SECONDS", "-5")
    assert main(["transcribe", "x.png"]) == 2
    assert "HTRQ_LEASE_SECONDS" in capsys.readouterr().err


def test_migrate_is_idempotent_and_explains_a_missing_database(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """migrate twice is fine; against a database that does not exist it says so in one
    sentence (no traceback) and exits 1."""
    monkeypatch.setenv("HTRQ_DATABASE_URL", database_url)
    assert main(["migrate"]) == 0
    assert main(["migrate"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("HTRQ_DATABASE_URL", database_url + "_nowhere")
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot migrate the database" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_closed_pipe_ends_the_command_quietly(database_url: str, engine: Engine) -> None:
    """`htrq keys list | head -1` on a list far longer than a pipe holds ends without a
    BrokenPipeError traceback."""
    import os
    import subprocess
    import sys
    import uuid

    from sqlalchemy import delete, insert

    from htrq.models import ApiKey, Tenant

    tenant = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(insert(Tenant).values(id=tenant, name=f"pipe-{tenant}", webhook_secret="x"))
        conn.execute(
            insert(ApiKey),
            [
                {"id": uuid.uuid4(), "tenant_id": tenant, "prefix": "htrq_xxxxxxx",
                 "key_hash": uuid.uuid4().hex * 2, "label": "a long label " * 4}
                for _ in range(3000)
            ],
        )  # fmt: skip
    try:
        proc = subprocess.run(
            f"{sys.executable} -m htrq.cli keys list | head -1",
            shell=True,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HTRQ_DATABASE_URL": database_url},
        )
    finally:
        with engine.begin() as conn:
            conn.execute(delete(Tenant).where(Tenant.id == tenant))
    assert proc.stdout.count("\n") == 1
    assert "BrokenPipeError" not in proc.stderr and "Traceback" not in proc.stderr


def test_server_commands_say_which_variable_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without HTRQ_DATABASE_URL the server commands refuse to start, naming it."""
    monkeypatch.delenv("HTRQ_DATABASE_URL", raising=False)
    assert main(["migrate"]) == 2
    assert "HTRQ_DATABASE_URL" in capsys.readouterr().err


@pytest.mark.usefixtures("embedded_env")
def test_transcribe_writes_to_a_configured_database(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With HTRQ_DATABASE_URL set, transcribe stores its job there, like the service would."""
    monkeypatch.setenv("HTRQ_DATABASE_URL", database_url)
    monkeypatch.setenv("HTRQ_STORAGE_DIR", str(tmp_path / "blobs"))
    page = tmp_path / "p.png"
    page.write_bytes(page_png())
    assert main(["transcribe", str(page), "--format", "json"]) == 0
    (out,) = json.loads(capsys.readouterr().out)
    with engine.connect() as conn:
        row = conn.execute(select(Page.status, Page.attempts).where(Page.id == out["id"])).one()
    assert tuple(row) == ("succeeded", 1)
