"""Provider error answers -> the gateway's errors, shared by every wire format.

A provider's client-side errors (bad parameter, context too long) reach the client with the
provider's own message and status, scrubbed of anything that looks like a credential. Its
authentication failures are the gateway's misconfiguration, never the caller's, so they become a
502; overload and server errors become 502 too (and are retryable); timeouts become 504.
"""

from __future__ import annotations

import re

from gateway.errors import GatewayError, RateLimited, UpstreamError, UpstreamStatusError, UpstreamTimeout

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504, 529})
PASS_THROUGH = frozenset({400, 404, 409, 413, 422})

_SECRET = re.compile(r"\b(?:sk|pk|rk|key|api|AIza)[-_A-Za-z0-9]{12,}|\bBearer\s+\S+", re.IGNORECASE)


def scrub(message: str) -> str:
    return _SECRET.sub("[redacted]", message)[:2000]


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from providers, treated as absent


def provider_error(provider: str, status: int, message: str | None, retry_after: str | None) -> GatewayError:
    text = scrub(message) if message else f"provider {provider!r} answered {status}"
    error: GatewayError
    if status == 429:
        error = RateLimited(text, code="upstream_rate_limited", retry_after=retry_after_seconds(retry_after))
    elif status in PASS_THROUGH:
        error = UpstreamStatusError(text, status=status, code="upstream_invalid_request")
    elif status in (401, 403):
        error = UpstreamError(f"provider {provider!r} rejected the gateway's credentials", code="upstream_auth")
    elif status in (408, 504):
        error = UpstreamTimeout(f"provider {provider!r} timed out", code="upstream_timeout")
    else:
        error = UpstreamError(f"provider {provider!r} failed ({status}): {text}", code="upstream_server_error")
    error.retryable = status in RETRYABLE_STATUS
    return error
