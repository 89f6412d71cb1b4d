"""The answer stage: every response a proxied request gets, built from its record.

The direct path (`pipeline/run.py`) and the reuse stage (cache hits, coalesced calls, batched
embeddings: `pipeline/reuse.py`) answer through the same functions, so an answer carries the same
headers however it was served: `x-request-id`, `x-gateway-target`, `x-gateway-cache` (the record's:
hit, miss, coalesced or bypass), `x-gateway-overhead-ms` (the gateway's own time until the headers
were written), and when they apply `x-gateway-prompt`, `x-gateway-redacted`, `x-gateway-usage` and
`x-gateway-cost-usd`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson
from starlette.responses import Response

from gateway.errors import GatewayError
from gateway.pipeline.record import Record
from gateway.providers.base import Reply
from gateway.responses import error_response
from gateway.streaming import JSONAnswer, SSEResponse


def headers(record: Record) -> dict[str, str]:
    out = {
        "x-request-id": record.request_id,
        "x-gateway-target": record.target or "",
        "x-gateway-cache": record.cache,
        "x-gateway-overhead-ms": f"{record.mark_overhead(time.perf_counter()):.2f}",
    }
    if record.prompt_id is not None:
        out["x-gateway-prompt"] = f"{record.prompt_id}@{record.prompt_version}"
    if record.redacted:
        out["x-gateway-redacted"] = ",".join(f"{kind}={n}" for kind, n in sorted(record.redacted.items()))
    return out


def json(record: Record, content: bytes, reply: Reply | None) -> Response:
    """A complete answer; `reply` is None when it comes from the cache."""
    out = headers(record)
    if reply is not None and reply.usage is not None and reply.usage.estimated:
        out["x-gateway-usage"] = "estimated"
    if record.priced:
        out["x-gateway-cost-usd"] = f"{record.cost_usd:.10f}"
    return JSONAnswer(content, out)


def stream(record: Record, body: AsyncGenerator[bytes, None], keepalive_s: float, on_stalled: Callable[[], None] | None) -> Response:
    """A stream whose first bytes are at hand: its time to first token is now."""
    record.ttft_s = time.perf_counter() - record.t0
    return SSEResponse(body, headers(record), keepalive_s, on_stalled=on_stalled)


def error(record: Record, exc: GatewayError) -> Response:
    """The error every failed request gets (gateway/responses.py), naming the prompt it resolved."""
    record.status, record.error_type = exc.status, exc.error_type
    prompt = {"x-gateway-prompt": f"{record.prompt_id}@{record.prompt_version}"} if record.prompt_id is not None else None
    return error_response(exc, record.request_id, prompt)


def captured(record: Record, data: dict[str, Any], content: bytes | None = None) -> None:
    """What traces keep of a complete answer (see Record.capture); `content` is its JSON, if at hand."""
    record.response_id, record.response_model = data.get("id"), data.get("model")
    if record.capture == "full":
        record.response_json = (content if content is not None else orjson.dumps(data)).decode()
