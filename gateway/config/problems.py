"""Validation problems as `FILE: dotted.key.path: what is wrong` lines, and `salvage`, which keeps
what can be read of a file that failed validation so that the checks after the schema still run."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

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


_CUT = object()  # marks a list item to drop once a round of cuts is done (indexes stay valid meanwhile)
_ROUNDS = 16  # each round removes at least one part; a file would need to nest this deep to run out


def salvage(model: type[M], raw: dict[str, Any]) -> M | None:
    """`raw` validated once every part its errors point at is cut off: an unknown key or a wrong
    value goes, a table missing a required key goes, then again until it validates (None if even
    the top level is wrong). For problem reports only, never to serve: it lets a broken file's
    cross-references, secrets and dependent files be checked in the same run as its schema."""
    data = copy.deepcopy(raw)
    for _ in range(_ROUNDS):
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        cut = [_cut(data, e["loc"][:-1] if e["type"] == "missing" else e["loc"]) for e in errors]
        if not any(cut):
            return None
        data = _without_cut(data)
    return None


def _cut(data: Any, loc: tuple[str | int, ...]) -> bool:
    """Cut the deepest part of `loc` present in `data`; what follows it is a union's tag, or a part
    another error of this round cut already (then nothing is cut)."""
    parent: Any = None
    key: str | int | None = None
    node = data
    for part in loc:
        if node is _CUT:
            return False
        if isinstance(node, dict):
            if part not in node:
                return False
        elif not isinstance(node, list) or not isinstance(part, int) or not 0 <= part < len(node):
            break  # a scalar where the error's path goes on: a union's branch tag
        parent, key, node = node, part, node[part]
    if parent is None or node is _CUT:
        return False
    if isinstance(parent, dict):
        del parent[key]
    else:
        parent[key] = _CUT
    return True


def _without_cut(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_cut(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_cut(v) for v in node if v is not _CUT]
    return node
