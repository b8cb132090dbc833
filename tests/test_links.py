"""Every relative link in the README and docs/ points at a file (or folder) that exists, and every
anchor into a Markdown file names one of its headings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *REPO.glob("*/README.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```", re.S)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    out = set()
    for line in CODE.sub("", path.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(REPO)) for d in DOCUMENTS])
def test_relative_links_resolve(document: Path) -> None:
    broken = []
    for target in LINK.findall(CODE.sub("", document.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:...
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        missing_anchor = bool(anchor) and resolved.suffix == ".md" and resolved.exists()
        if not resolved.exists() or (missing_anchor and anchor not in anchors(resolved)):
            broken.append(target)
    assert not broken, f"{document.relative_to(REPO)}: broken links {broken}"
