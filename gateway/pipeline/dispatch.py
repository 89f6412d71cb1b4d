"""Calling the chosen deployment, for complete answers and for streams.

A stream is committed to the client only once the provider has produced its first translated
event: anything that fails before that (connect errors, error statuses, garbage) is still an
ordinary HTTP error, which later stages may retry. After the first byte, a failure ends the stream
with an SSE `error` event and no `[DONE]`, and is never retried. When the client goes away, the
ASGI server cancels the relay; its `finally` closes the upstream connection at once, so the
provider stops generating.

What was consumed is charged on every ending (docs/cost.md "Charging"): a stream that ends early (client
gone or stalled, deadline, upstream break) settles its prompt plus the completion relayed so far
(`charge_consumed`); a complete answer that was sent but never came (timeouts, a dropped
connection, cancellation) settles its prompt (`charge_unanswered`). The record then carries the
figures that the trace, the budget and the tpm settlement all read.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.pipeline.record import Record, Unanswered
from gateway.pipeline.usage import counted, estimate, prompt_tokens
from gateway.pricing import cost_usd
from gateway.providers.base import Deployment, Operation, Reply, StreamState, StreamTranslator, Usage
from gateway.providers.errors import provider_error
from gateway.providers.openai import completion_text, garbage
from gateway.providers.shapes import finish_embeddings
from gateway.sse import DONE, SSEDecoder, frame
from gateway.tokens import Tokenizer
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


@dataclass(slots=True)
class Completion:
    """A complete answer: its JSON as the client gets it, the parsed reply, and who gave it."""

    content: bytes
    reply: Reply
    deployment: Deployment


async def complete(
    op: Operation, body: dict[str, Any], deployment: Deployment, record: Record, first_byte_s: float, deadline: float = math.inf
) -> Completion:
    """The whole answer. `deadline` (for streams) is not read: a complete answer is bounded by
    `first_byte_s`, the deadline's remainder, and then by the provider's idle timeout."""
    started = time.perf_counter()
    try:
        response = await _send(op, body, deployment, record, first_byte_s)
        raw = await response.read()
    except BaseException as exc:
        _note_unanswered(exc, op, body, deployment, record)
        raise
    finally:
        record.upstream_s += time.perf_counter() - started
    reply = deployment.wire.reply(op, raw)
    if reply.usage is None:
        reply.usage = await estimate(op, body, completion_text(reply), deployment.model, record)
        reply.data["usage"] = reply.usage.as_openai()
        reply.raw = None
    settle(record, deployment, reply.usage)
    if reply.raw is None:  # the gateway writes this body anyway: complete it (costs nothing more)
        if op is Operation.EMBEDDINGS:
            finish_embeddings(reply.data, deployment.model, body.get("encoding_format"))
        if record.priced and isinstance(reply.data.get("usage"), dict):
            reply.data["usage"]["cost_usd"] = record.cost_usd
    record.finish_reason = reply.finish_reason
    return Completion(reply.raw if reply.raw is not None else orjson.dumps(reply.data), reply, deployment)


# the provider had the request and gave no answer (its own error statuses are not billed, and a
# connect error never reached it): it bills the prompt, so the request is charged for it
SENT_UNANSWERED = frozenset({"first_byte_timeout", "idle_timeout", "upstream_disconnected", "upstream_error"})


def _note_unanswered(exc: BaseException, op: Operation, body: dict[str, Any], deployment: Deployment, record: Record) -> None:
    """A call the provider was sent but never answered (a timeout, a dropped connection, the client
    cancelling) still bills its prompt: note it on the record, which charges it once at its end."""
    if isinstance(exc, asyncio.CancelledError) or (isinstance(exc, GatewayError) and exc.error_type in SENT_UNANSWERED):
        record.unanswered = Unanswered(op, body, deployment)


async def charge_unanswered(record: Record) -> None:
    """When a request ends with no usage but an attempt was sent and never answered: settle its
    prompt tokens (counted off the event loop), once, however many attempts went that way. Attempts
    only note it (`Record.unanswered`), so retries do not wait for a count an answer would replace."""
    if record.unanswered is None or record.usage is not None:
        return
    sent, record.unanswered = record.unanswered, None
    deployment = sent.deployment
    try:
        await record.tokenizer.load(deployment.model)
        prompt = counted(record, deployment.model)
        if prompt is None:
            count = partial(prompt_tokens, record.tokenizer, sent.op, sent.body, deployment.model)
            prompt = await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(count)))
    except asyncio.CancelledError:  # shutting down: the record goes out as it is
        return
    settle(record, deployment, Usage(prompt, 0, estimated=True))


def settle(record: Record, deployment: Deployment, usage: Usage) -> None:
    """Record a request's final usage and its cost (0.0, and not priced, when no price applies)."""
    record.usage = usage
    record.priced = deployment.price is not None
    record.cost_usd = cost_usd(deployment.price, usage)


class Stream:
    """An upstream stream opened up to its first translated bytes, ready to relay the rest.

    `deadline` is the perf_counter time by which the whole stream must be over (its model's
    deadline from the request's arrival); `closing` settles its usage when it completes, `charge`
    what it consumed when it ends early (see `closing_usage` and `charge_consumed`)."""

    def __init__(
        self,
        response: UpstreamResponse,
        translator: StreamTranslator,
        record: Record,
        deadline: float,
        closing: Callable[[StreamState], Awaitable[bytes]],
        charge: Charge,
    ) -> None:
        self._response = response
        self._chunks = response.chunks().__aiter__()
        self._decoder = SSEDecoder()
        self._translator = translator
        self._record = record
        self._closing = closing
        self._charge = charge
        self.first = b""
        self.deadline = deadline

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

    async def relay(self, done: Callable[[Record], None] | None) -> AsyncGenerator[bytes, None]:
        """The stream for the client. However it ends, `done` is given the record once it says what
        the stream cost and what it answered: a stream that ends early (client gone, deadline,
        upstream break) is first given what it consumed (see `charge_consumed`)."""
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
            tail = await self._closing(self.state)  # settles the usage: until it has, an interruption still charges
            finished = True
            yield tail + DONE
        except GatewayError as exc:
            record.status, record.error_type = exc.status, exc.error_type
            yield frame(exc.json(), "error")
        except ValueError:  # an SSE event over the size limit
            error = garbage()
            record.status, record.error_type = error.status, error.error_type
            yield frame(error.json(), "error")
        finally:
            try:
                if not finished:
                    self._response.close()
                    if record.error_type is None:
                        record.status, record.error_type = 499, "client_disconnected"
                    await self._charge(self.state)
            finally:
                if done is not None:
                    state = self.state
                    record.response_id, record.response_model = state.response_id, state.response_model
                    if record.capture == "full":
                        record.response_text = state.text
                    done(record)


Charge = Callable[[StreamState], Awaitable[None]]


async def open_stream(
    op: Operation, body: dict[str, Any], deployment: Deployment, record: Record, first_byte_s: float, deadline: float
) -> Stream:
    started = time.perf_counter()
    try:
        response = await _send(op, body, deployment, record, first_byte_s)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        closing, charge = closing_usage(op, body, deployment, record), charge_consumed(op, body, deployment, record)
        stream = Stream(response, deployment.wire.stream(op, include_usage), record, deadline, closing, charge)
        if deployment.price is not None:
            stream.state.cost = partial(cost_usd, deployment.price)
        await stream.open()
    except BaseException as exc:
        _note_unanswered(exc, op, body, deployment, record)
        raise
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
        usage = await estimate(op, body, "".join(state.text), deployment.model, record)
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


def charge_consumed(op: Operation, body: dict[str, Any], deployment: Deployment, record: Record) -> Charge:
    """For a stream that ends early: settle the prompt plus the completion relayed so far, as the
    provider bills them. The upstream's usage when it sent one that counts the completion; else
    the relayed text counted with tiktoken, off the event loop (up to KEEP_TEXT characters, the rest
    at 4 characters a token). If this is itself interrupted, the completion is charged at 4
    characters a token and the prompt not at all, rather than leaving the request free."""

    async def charge(state: StreamState) -> None:
        record.finish_reason = state.finish_reason
        text = "".join(state.text)
        if state.usage is not None and (state.usage.completion_tokens or not text):
            settle(record, deployment, state.usage)
            return
        rough = Usage(0, (len(text) + state.dropped_chars) // 4, estimated=True)
        try:
            await record.tokenizer.load(deployment.model)
            known = counted(record, deployment.model)
            count = partial(_count, record.tokenizer, op, body, text, deployment.model, known)
            usage = await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(count)))
        except asyncio.CancelledError:
            settle(record, deployment, rough)
            raise
        usage.completion_tokens += state.dropped_chars // 4
        if state.usage is not None:  # the provider's prompt figure beats our count
            usage.prompt_tokens, usage.cached_tokens = state.usage.prompt_tokens, state.usage.cached_tokens
        settle(record, deployment, usage)

    return charge


def _count(tokenizer: Tokenizer, op: Operation, body: dict[str, Any], text: str, model: str, prompt: int | None) -> Usage:
    """In a worker thread: the prompt (unless counted already) and a completion text, counted (both can be large)."""
    output = tokenizer.count_text(text, model) if text else 0
    return Usage(prompt_tokens(tokenizer, op, body, model) if prompt is None else prompt, output, estimated=True)
