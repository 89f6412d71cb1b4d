"""Reading the request body: a size limit enforced while reading, and JSON errors said plainly."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from gateway.errors import BadRequest, GatewayError, PayloadTooLarge
from gateway.pipeline import shape


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is larger than the gateway's limit of {limit} bytes.")


BODY_TIMED_OUT = "gateway.body_timed_out"  # in the ASGI scope: the server's body timeout (s), once it passed


class RequestTimeout(GatewayError):
    """The body did not arrive in time (gateway/server.py): the answer closes the connection, whose
    unread rest would otherwise be taken for the next request."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {"connection": "close"}


class ClientGone(GatewayError):
    """The client left mid-body: traced as 499 like any request whose client left (the answer reaches nobody)."""

    status = 499
    type = "invalid_request_error"
    code = "client_disconnected"


async def read_body(request: Request, limit: int, declared: str | None = None) -> bytes:
    """The whole body, read straight from ASGI `receive` (one message for most requests; Starlette's
    `Request.stream` adds an async generator and its bookkeeping to each). `declared`: the
    content-length header, if the caller has already looked it up."""
    if declared is None:
        declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: the client is gone
            raise ClientGone("The client closed the connection before its request body was complete.")
        chunk: bytes = message.get("body", b"")
        if not chunk and message.get("more_body") and BODY_TIMED_OUT in request.scope:  # the server woke us: too slow
            timeout = request.scope[BODY_TIMED_OUT]
            raise RequestTimeout(f"The request body did not arrive within {timeout:g} s of its headers (server.body_timeout_s).")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


async def read_json(request: Request, limit: int, declared: str | None = None) -> dict[str, Any]:
    return parse_json(await read_body(request, limit, declared))


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON ({exc.msg} at position {exc.pos}).", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(body):  # too few brackets (most bodies): not deep
        raise BadRequest(f"The request body is nested deeper than {MAX_DEPTH} levels.", code="invalid_json")
    return body


# orjson reads 1024 levels but writes only 254 (the trace sink writes bodies, inside its frame), and
# later readers of a body may recurse: a body nested deeper than MAX_DEPTH is refused as it is parsed.
MAX_DEPTH = 64


def _orjson_depth() -> int:
    """How many levels orjson writes (254 in orjson 3): measured once, not assumed."""
    value: Any = None
    for depth in range(1, 10_000):
        value = [value]
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            return depth - 1
    return 10_000


class _Slot:
    """Where `too_deep` puts the body: orjson cannot encode it, so it asks `default`."""


def _probe() -> Any:
    value: Any = _Slot()
    for _ in range(_orjson_depth() - MAX_DEPTH):
        value = [value]
    return value


_PROBE = _probe()


def too_deep(body: dict[str, Any]) -> bool:
    """Is `body` (as orjson read it) nested deeper than MAX_DEPTH? orjson writes it under as many
    levels as leave it exactly MAX_DEPTH before its own limit: at C speed, ~1 ns a byte, where a
    walk in Python costs ~30 ns a value (a 1.9 KB body with eight tool schemas: 1.5 us against 8).
    A body orjson read can fail to be written only by its depth."""
    try:
        orjson.dumps(_PROBE, default=lambda _: body)
    except orjson.JSONEncodeError:
        return True
    return False


REQUIRED: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "chat": ("messages", list),
    "text_completion": ("prompt", (str, list)),
    "embeddings": ("input", (str, list)),
}


def validate(body: dict[str, Any], operation: str) -> str:
    """Check the fields every provider needs and the types of those the gateway reads (`shape.py`);
    return the requested model name."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    field, kinds = REQUIRED[operation]
    value = body.get(field)
    if not isinstance(value, kinds) or (isinstance(value, list) and not value):
        raise BadRequest(f"'{field}' is a required property and must not be empty.", param=field, code="invalid_value")
    shape.check(body, operation)
    return model
