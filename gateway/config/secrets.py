"""Secrets are references (`env:NAME`, `file:PATH`), resolved once at load, never printed."""

from __future__ import annotations

import os
from pathlib import Path


class Secret:
    """A resolved secret. Its repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def resolve(reference: str, base_dir: Path) -> Secret:
    """Resolve a reference or raise ValueError saying why (without the secret)."""
    scheme, _, name = reference.partition(":")
    if scheme == "env" and name:
        value = os.environ.get(name)
        if value is None:
            raise ValueError(f"environment variable {name} is not set")
        return Secret(value)
    if scheme == "file" and name:
        path = Path(name).expanduser()
        path = path if path.is_absolute() else base_dir / path
        try:
            return Secret(path.read_text().strip())
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    raise ValueError('must be a reference "env:NAME" or "file:PATH", never the secret itself')
