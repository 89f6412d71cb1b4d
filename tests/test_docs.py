"""The documentation holds together: README.md is a front page, every docs/ page is reachable from it,
and every relative link and #anchor in README.md and docs/*.md points at something that exists.

Links are checked the way GitHub renders them: a path relative to the page, and an anchor that is a
heading's slug (lowercased, punctuation dropped, spaces turned into hyphens).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway.config.schema import (
    BatchSection,
    ConfigFile,
    ModelSection,
    Price,
    ProviderSection,
    RuleSection,
    TargetSection,
)

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


def _config_rows() -> list[str]:
    text = (ROOT / "docs" / "config.md").read_text()
    return [line for line in text.splitlines() if line.startswith("| `")]


def _undocumented(model: type[BaseModel], row_start: str, rows: list[str]) -> list[str]:
    """Fields of `model` named in no config-table row whose key column starts with `row_start`."""
    mine = [row for row in rows if row.startswith(f"| `{row_start}")]
    dot = "" if row_start.endswith(".") else "."
    named = [name for name in model.model_fields if any(re.search(rf"\b{name}\b", row) for row in mine)]
    return [f"{row_start}{dot}{name}" for name in model.model_fields if name not in named]


def test_config_table_names_every_config_key() -> None:
    # docs/config.md is the full table: a key added to the schema without a row fails here.
    rows = _config_rows()
    missing: list[str] = []
    for name, field in ConfigFile.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):  # not providers, models: tables of NAME
            missing += _undocumented(section, f"{name}.", rows)
    missing += _undocumented(ProviderSection, "providers.NAME.", rows)
    missing += _undocumented(ModelSection, 'models."NAME".', rows)
    missing += _undocumented(TargetSection, 'models."NAME".targets', rows)
    missing += _undocumented(RuleSection, 'models."NAME".rules', rows)
    missing += _undocumented(BatchSection, 'models."NAME".batch', rows)
    missing += _undocumented(Price, "price", rows)
    assert missing == []


def test_a_broken_link_is_reported(tmp_path: Path) -> None:
    # The checker itself: a missing file and a missing anchor are both caught.
    (tmp_path / "a.md").write_text("# Title\n\n## Real part\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#real-part) [gone](c.md) [bad](a.md#nope) [self](#title) [web](https://x.y)\n# Title\n")
    assert _broken(page) == ["c.md: no such file", "a.md#nope: no heading with that anchor in a.md"]
