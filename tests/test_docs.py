"""The documentation holds together: README.md is a front page, every docs/ page is reachable from it,
and every relative link and #anchor in README.md and docs/*.md points at something that exists.

Links are checked the way GitHub renders them: a path relative to the page, and an anchor that is a
heading's slug (lowercased, punctuation dropped, spaces turned into hyphens).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
# A front page, not a manual: the reference lives in docs/ (issue #14 found a 42 KB README).
FRONT_PAGE_MAX_BYTES = 12_000


def _slug(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [m.group(1) for m in LINK.finditer(text)]


def _broken(page: Path) -> list[str]:
    problems = []
    for link in _links(page):
        if re.match(r"^[a-z]+:", link):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            problems.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            problems.append(f"{link}: no heading with that anchor in {target.name}")
    return problems


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    assert _broken(page) == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    assert PAGES, "docs/ holds the reference pages"
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in _links(README)}
    assert [p.name for p in PAGES if p.resolve() not in linked] == []


def test_readme_is_a_front_page() -> None:
    text = README.read_text()
    assert len(text.encode()) < FRONT_PAGE_MAX_BYTES
    for part in ("./dev serve", "./dev test", "from openai import OpenAI", "## Map of the code"):
        assert part in text


def test_a_broken_link_is_reported(tmp_path: Path) -> None:
    # The checker itself: a missing file and a missing anchor are both caught.
    (tmp_path / "a.md").write_text("# Title\n\n## Real part\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#real-part) [gone](c.md) [bad](a.md#nope) [self](#title) [web](https://x.y)\n# Title\n")
    assert _broken(page) == ["c.md: no such file", "a.md#nope: no heading with that anchor in a.md"]
