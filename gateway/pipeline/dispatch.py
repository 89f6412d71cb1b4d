"""Calling the chosen deployment, for complete answers and for streams.

A stream is committed to the client only once the provider has produced its first translated
event: anything that fails before that (connect errors, error statuses, garbage) is still an
ordinary HTTP error, which later stages may retry. After the first byte, a failure ends the stream
with an SSE `error` event and no `[DONE]`, and is never retried. When the client goes away, the
ASGI server cancels the relay; its `finally` closes the upstream connection at once, so the
provider stops generating.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.pipeline.record import Record
from gateway.pipeline.usage import estimate
from gateway.pricing import cost_usd
from gateway.providers.base import Deployment, Operation, Reply, StreamState, StreamTranslator, Usage
from gateway.providers.errors import provider_error
from gateway.providers.openai import completion_text, garbage
from gateway.providers.shapes import finish_embeddings
from gateway.sse import DONE, SSEDecoder, frame
from gateway.traces.context import upstream_header
from gateway.upstream import UpstreamRequest, UpstreamResponse


async def _send(
    op: Operation, body: dict[str, Any], deployment: Deployment, record: Record, first_byte_s: float | None
) -> UpstreamResponse:
    request = deployment.wire.request(op, body, deployment)
    if record.trace_id:  # continue the trace upstream, under this attempt's CLIENT span
        header = upstream_header(record.trace_id, record.span_id, record.trace_flags, len(record.attempts))
        request = UpstreamRequest(request.url, {**request.headers, "traceparent": header}, request.body)
    record.target = deployment.label
    response = await deployment.transport.send(request, first_byte_s or deployment.first_byte_s)
    if response.status >= 300:
        raw = await response.read()
        message = deployment.wire.error_message(raw)
        retry_after = response.headers.get("retry-after") or deployment.wire.retry_after(raw)
        raise provider_error(deployment.provider, response.status, message, retry_after)
    return response


async def complete(
    op: Operation, body: dict[str, Any], deployment: Deployment, record: Record, first_byte_s: float | None = None
) -> tuple[bytes, Reply]:
    started = time.perf_counter()
    try:
        response = await _send(op, body, deployment, record, first_byte_s)
        raw = await response.read()
    finally:
        record.upstream_s += time.perf_counter() - started
    reply = deployment.wire.reply(op, raw)
    if reply.usage is None:
        reply.usage = await estimate(op, body, completion_text(reply), deployment.model)
        reply.data["usage"] = reply.usage.as_openai()
        reply.raw = None
    settle(record, deployment, reply.usage)
    if reply.raw is None:  # the gateway writes this body anyway: complete it (costs nothing more)
        if op is Operation.EMBEDDINGS:
            finish_embeddings(reply.data, deployment.model, body.get("encoding_format"))
        if record.priced and isinstance(reply.data.get("usage"), dict):
            reply.data["usage"]["cost_usd"] = record.cost_usd
    record.finish_reason = reply.finish_reason
    return (reply.raw if reply.raw is not None else orjson.dumps(reply.data)), reply


def settle(record: Record, deployment: Deployment, usage: Usage) -> None:
    """Record a request's final usage and its cost (0.0, and not priced, when no price applies)."""
    record.usage = usage
    record.priced = deployment.price is not None
    record.cost_usd = cost_usd(deployment.price, usage)


class Stream:
    """An upstream stream opened up to its first translated bytes, ready to relay the rest."""

    def __init__(self, response: UpstreamResponse, translator: StreamTranslator, record: Record) -> None:
        self._response = response
        self._chunks = response.chunks().__aiter__()
        self._decoder = SSEDecoder()
        self._translator = translator
        self._record = record
        self.first = b""
        self.deadline = math.inf  # perf_counter time by which the whole stream must be over

    @property
    def state(self) -> StreamState:
        return self._translator.state

    def _translate(self, piece: bytes) -> bytes:
        return b"".join([self._translator.feed(event) for event in self._decoder.feed(piece)])

    async def open(self) -> None:
        """Read until the first translated bytes; raise a GatewayError if the stream fails first."""
        try:
            while not self.first:
                self.first = self._translate(await anext(self._chunks))
        except StopAsyncIteration:
            raise garbage() from None
        except BaseException:
            self._response.close()
            raise

    async def relay(self, closing: Callable[[StreamState], Awaitable[bytes]], done: Callable[[], None]) -> AsyncGenerator[bytes, None]:
        record = self._record
        finished = False
        try:
            yield self.first
            async for piece in self._chunks:
                out = self._translate(piece)
                if out:
                    yield out
                if time.perf_counter() > self.deadline:
                    raise UpstreamTimeout("the stream ran past its model's deadline", code="deadline_exceeded")
            if not (self.state.done or self.state.finish_reason):
                raise UpstreamError("the provider ended the stream before it was complete", code="stream_incomplete")
            finished = True
            yield (await closing(self.state)) + DONE
        except GatewayError as exc:
            record.status, record.error_type = exc.status, exc.error_type
            yield frame(exc.json(), "error")
        except ValueError:  # an SSE event over the size limit
            error = garbage()
            record.status, record.error_type = error.status, error.error_type
            yield frame(error.json(), "error")
        finally:
            if not finished:
                self._response.close()
                if record.error_type is None:
                    record.status, record.error_type = 499, "client_disconnected"
            done()


async def open_stream(
    op: Operation, body: dict[str, Any], deployment: Deployment, record: Record, first_byte_s: float | None = None
) -> Stream:
    started = time.perf_counter()
    try:
        response = await _send(op, body, deployment, record, first_byte_s)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stream = Stream(response, deployment.wire.stream(op, include_usage), record)
        if deployment.price is not None:
            stream.state.cost = partial(cost_usd, deployment.price)
        await stream.open()
    finally:
        record.upstream_s += time.perf_counter() - started
    return stream


def closing_usage(op: Operation, body: dict[str, Any], deployment: Deployment, record: Record) -> Callable[[StreamState], Awaitable[bytes]]:
    """At the end of a stream: settle usage, estimating it (and telling the client if it asked) when absent."""

    async def close(state: StreamState) -> bytes:
        record.finish_reason = state.finish_reason
        if state.usage is not None:
            settle(record, deployment, state.usage)
            return b""
        usage = await estimate(op, body, "".join(state.text), deployment.model)
        usage.completion_tokens += state.dropped_chars // 4  # text past what a stream keeps: chars / 4
        settle(record, deployment, usage)
        if not state.include_usage:
            return b""
        obj = "chat.completion.chunk" if op is Operation.CHAT else "text_completion"
        chunk: dict[str, Any] = {
            "id": state.response_id,
            "object": obj,
            "created": int(time.time()),
            "model": state.response_model or deployment.model,
            "choices": [],
            "usage": usage.as_openai() | ({"cost_usd": record.cost_usd} if record.priced else {}),
        }
        return frame(orjson.dumps(chunk))

    return close
