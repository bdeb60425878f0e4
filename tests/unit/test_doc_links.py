"""Links in the Markdown files outside docs/ lead somewhere (docs/ itself is built strictly
by ./scripts/test, which checks its links and anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[2]
#: The Markdown files MkDocs does not build: the README and the notes beside code.
FILES = [
    ROOT / "README.md",
    ROOT / "tests" / "README.md",
    ROOT / "samples" / "README.md",
    ROOT / "worker" / "models" / "htrq-line-small" / "README.md",
    ROOT / "worker" / "models" / "htrq-line-small" / "TRAINING-DATA.md",
]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _anchors(md: Path) -> set[str]:
    """The ids MkDocs (and, for plain headings, GitHub) gives the file's headings."""
    text = FENCE.sub("", md.read_text(encoding="utf-8"))
    return {
        slugify(m.group(1).replace("`", "").strip(), "-")
        for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)
    }


def _links(md: Path) -> list[str]:
    text = FENCE.sub("", md.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("md", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_exist(md: Path) -> None:
    """Every relative link names a file that exists, and every #anchor a heading in it."""
    broken = []
    for target in _links(md):
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            broken.append(f"{target}: no {dest.relative_to(ROOT)}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{md.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_checker_sees_a_broken_anchor(tmp_path: Path) -> None:
    """The check above would fail on a link to a heading that is not there."""
    page = tmp_path / "a.md"
    page.write_text("# Title\n\n## Fair share between tenants\n\n[x](#fair-share)\n")
    assert "fair-share-between-tenants" in _anchors(page)
    assert "fair-share" not in _anchors(page)
