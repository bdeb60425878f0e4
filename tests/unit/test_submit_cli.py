"""``htrq submit`` refuses what it cannot finish before sending anything, and says what went
wrong in one line rather than a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from htrq.cli import main
from tests.images import page_png
from tests.services import free_port


@pytest.fixture
def page(tmp_path: Path) -> Path:
    path = tmp_path / "p.png"
    path.write_bytes(page_png())
    return path


@pytest.mark.parametrize("fmt", ["pdf", "alto", "page"])
def test_a_binary_format_without_output_is_refused_before_submitting(
    page: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--wait --format pdf|alto|page without -o exits 2 with one line naming -o; nothing is
    sent (the URL has no server: a submit would fail otherwise)."""
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["submit", str(page), "--wait", "--format", fmt, "--url", url])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "-o" in err and "Traceback" not in err


def test_a_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not there exits 2 with one line naming it."""
    missing = tmp_path / "nope.png"
    code = main(["submit", str(missing), "--url", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"htrq: {missing}: no such file"


@pytest.mark.slow  # the client's retries back off for 7.5 s before giving up
def test_an_unreachable_server_is_one_line(page: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No server at the URL: exit 1 with one line naming the URL, no traceback."""
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["submit", str(page), "--url", url])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().count("\n") == 0 and f"cannot reach the API at {url}" in err
    assert main(["status", "00000000-0000-0000-0000-000000000000", "--url", url]) == 1
