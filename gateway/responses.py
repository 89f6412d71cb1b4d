"""The responses the gateway builds itself: JSON bodies, every error, and the 404/405/500 handlers.

Every error a client can get leaves through `error_response`: the OpenAI-shaped body its class
renders (errors.py), its status, its Retry-After if it has one, and `x-request-id`, the client's own
or a new one, so a failed call can be found in the logs and traces like a served one. Proxied
answers are built in pipeline/answer.py, and their errors come here too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, MethodNotAllowed, NotFound
from gateway.pipeline.record import request_id

log = logging.getLogger("gateway")
JSON = "application/json"


def error_response(exc: GatewayError, rid: str, headers: Mapping[str, str] | None = None) -> Response:
    out = {"x-request-id": rid, **exc.headers()}
    if headers:
        out.update(headers)
    return Response(exc.json(), exc.status, headers=out, media_type=JSON)


def json_response(body: Any, rid: str, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, headers={"x-request-id": rid}, media_type=JSON)


async def not_found(request: Request, exc: Exception) -> Response:
    error = NotFound(f"Unknown path {request.url.path!r}.", code="unknown_url")
    return error_response(error, request_id(request.headers))


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    error = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path!r}.")
    return error_response(error, request_id(request.headers))


async def internal_error(request: Request, exc: Exception) -> Response:
    rid = request_id(request.headers)
    log.exception("unhandled error on %s (request %s)", request.url.path, rid, exc_info=exc)
    return error_response(GatewayError("The gateway hit an internal error.", code="internal_error"), rid)
