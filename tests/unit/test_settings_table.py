"""The settings page (docs/settings.md) is the one written from ``Settings`` as it is now."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from htrq.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    path = ROOT / "scripts" / "settings_table.py"
    spec = importlib.util.spec_from_file_location("settings_table", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def _rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `HTRQ_"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_the_settings_page_is_current() -> None:
    """docs/settings.md is what scripts/settings_table.py writes from Settings today."""
    gen = _generator()
    written = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert written == gen.render(), (
        "docs/settings.md is stale: run .venv/bin/python scripts/settings_table.py and commit it"
    )


def test_every_setting_has_one_row_and_every_row_a_setting() -> None:
    """Each field of Settings has exactly one row, under its HTRQ_ name, and no row is extra."""
    rows = _rows((ROOT / "docs" / "settings.md").read_text(encoding="utf-8"))
    assert set(rows) == {f"HTRQ_{name.upper()}" for name in Settings.model_fields}
    for var, cells in rows.items():
        assert cells[1] == f"`{var.removeprefix('HTRQ_').lower()}`"
        assert cells[3], f"{var}: say which processes read it"


def test_max_attempts_is_read_by_the_api_not_the_worker() -> None:
    """HTRQ_MAX_ATTEMPTS is fixed on each page by the API at submit and retry (issue 26)."""
    rows = _rows((ROOT / "docs" / "settings.md").read_text(encoding="utf-8"))
    assert rows["HTRQ_MAX_ATTEMPTS"][3] == "api"
