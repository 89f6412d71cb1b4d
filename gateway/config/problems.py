"""Validation problems as `FILE: dotted.key.path: what is wrong` lines."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path or '(top level)'}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found, so one run of `gateway check` reports them all."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def dotted(*parts: str | int) -> str:
    """TOML-style path: bare keys plain, others quoted, list indexes in brackets."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.match(part) else '"' + part.replace('"', '\\"') + '"'
            out += ("." if out else "") + key
    return out


def from_validation(file: str, error: ValidationError, prefix: Iterable[str | int] = ()) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        message = _MESSAGES.get(item["type"], item["msg"])
        problems.append(Problem(file, dotted(*prefix, *item["loc"]), message))
    return problems
