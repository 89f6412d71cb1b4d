"""Redis URLs in `[state]`: `redis://host:port/db?prefix=...` names the key prefix too."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit


def split_prefix(url: str) -> tuple[str, str | None]:
    """-> (the URL redis-py is given, without `prefix`; the prefix, if the URL set one)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", [None])[0]
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True))), prefix
