"""One error tree for everything a client can be told.

    GatewayError                       status  OpenAI type
    ├── BadRequest                     400     invalid_request_error
    ├── AuthenticationError            401     authentication_error
    ├── PermissionDenied               403     permission_error
    ├── NotFound                       404     invalid_request_error
    ├── MethodNotAllowed               405     invalid_request_error
    ├── Conflict                       409     invalid_request_error
    ├── PayloadTooLarge                413     invalid_request_error
    ├── RateLimited                    429     rate_limit_error      (carries Retry-After)
    ├── UpstreamError                  502     upstream_error        (failed, refused, garbage)
    │   └── UpstreamStatusError        4xx     invalid_request_error (the provider's own message)
    ├── Unavailable                    503     service_unavailable   (carries Retry-After)
    │   └── StoreUnavailable           503     service_unavailable   (a state backend: refused, down, breaker open)
    │       └── StoreTimeout           503     service_unavailable   (its call outlasted the per-call timeout)
    └── UpstreamTimeout                504     timeout_error

Library errors (aiohttp, orjson, redis) are translated into this tree once, where they are raised
(`upstream.py`, `pipeline/body.py`, `stores/redis.py`); everything above that edge sees only these
classes. A store error reaches a client only where the store is the request's whole point (a prompt
push answers 503); the cache and limits stages turn it into their outage behaviour instead. Each error
renders its own OpenAI-shaped body; the message is written for the client and never holds a key,
a credential-bearing URL or a stack trace. `responses.error_response` is the one place an error
becomes a response (with `x-request-id`), whichever endpoint or handler raised it; an exception
outside this tree answers as the base class, 500 `internal_error`.
"""

from __future__ import annotations

import math

import orjson


class GatewayError(Exception):
    status = 500
    type = "internal_error"
    code: str | None = None
    retryable = False  # may another attempt (retry, fallback) succeed where this one failed?
    reason: str | None = None  # a finer reason code for traces (e.g. which guardrail rule), when there is one

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after

    @property
    def error_type(self) -> str:
        """The closed, low-cardinality name used in traces and metrics."""
        return self.reason or self.code or self.type

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json(self) -> bytes:
        return orjson.dumps(self.body())

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after)))}  # never earlier than it could pass


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    retryable = True


class UpstreamStatusError(UpstreamError):
    """A provider's own client-side error (400, 404, 409, 413, 422) relayed with its status."""

    type = "invalid_request_error"


class Unavailable(GatewayError):
    status = 503
    type = "service_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "timeout_error"
    retryable = True


class StoreUnavailable(Unavailable):
    """A state backend (cache, limits, prompt store) failed, or is skipped while its breaker is open."""

    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class StoreTimeout(StoreUnavailable):
    code = "store_timeout"
