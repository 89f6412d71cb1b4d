"""The CLI's side of a running gateway's admin API: one call, its JSON body, or an error saying why."""

from __future__ import annotations

from typing import Any

import httpx


class AdminError(Exception):
    """The gateway could not be reached (`status` None) or answered an error (`status` its HTTP status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def bearer(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def call(method: str, url: str, path: str, key: str | None, timeout: float, **kwargs: Any) -> Any:
    try:
        reply = httpx.request(method, url.rstrip("/") + path, headers=bearer(key), timeout=timeout, **kwargs)
    except httpx.HTTPError as exc:
        raise AdminError(f"cannot reach the gateway at {url}: {exc}") from None
    try:
        body = reply.json()
    except ValueError:
        body = None
    if reply.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        message = error["message"] if isinstance(error, dict) and isinstance(error.get("message"), str) else reply.text[:200]
        raise AdminError(f"HTTP {reply.status_code}: {message}", reply.status_code)
    return body
