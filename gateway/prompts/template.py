"""`{{name}}` templates: parsed once, at load, into literal and variable parts; rendering only joins.

There is no expression language: the text between `{{` and `}}` must be a declared variable name
(surrounding spaces allowed) and anything else (`{{ a.b }}`, `{{ f() }}`, `{{ x|upper }}`) is
rejected at load, as are `{%` and `{#`, so a template written for Jinja fails loudly instead of
rendering half-understood. Values are inserted as they are and never parsed again: a value
containing `{{other}}` stays literal text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPEN = re.compile(r"\{\{|\{%|\{#")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Var:
    name: str


@dataclass(frozen=True, slots=True)
class Template:
    parts: tuple[str | Var, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.parts if isinstance(p, Var))

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(p if isinstance(p, str) else values[p.name] for p in self.parts)


def parse(text: str, declared: frozenset[str]) -> Template:
    """Split `text` into parts; raise TemplateError saying what is wrong and where."""
    parts: list[str | Var] = []
    pos = 0
    while (found := _OPEN.search(text, pos)) is not None:
        start = found.start()
        if found.group() != "{{":
            raise TemplateError(f"template logic ({found.group()!r} at offset {start}) is not supported: only {{{{name}}}}")
        end = text.find("}}", start + 2)
        if end < 0:
            raise TemplateError(f"'{{{{' at offset {start} is never closed")
        inner = text[start + 2 : end].strip()
        if not NAME.fullmatch(inner):
            raise TemplateError(f"{{{{{text[start + 2 : end]}}}}} is not a variable name: only {{{{name}}}} is substituted")
        if inner not in declared:
            raise TemplateError(f"variable {inner!r} is not declared in `variables`")
        if start > pos:
            parts.append(text[pos:start])
        parts.append(Var(inner))
        pos = end + 2
    if pos < len(text):
        parts.append(text[pos:])
    return Template(tuple(parts))
