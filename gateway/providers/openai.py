"""Kind `openai`: any OpenAI-compatible server (OpenAI, vLLM, Ollama, LM Studio, Together...).

The request goes up almost as the client sent it: the model name is swapped for the deployment's
and streams ask for usage. Answers are relayed byte for byte once they have parsed; only a stream's
usage-only chunk is dropped when the gateway (not the client) asked for it, because clients that
did not ask for it often index `choices[0]` and would fail on its empty list, and, for a priced
deployment, the chunk carrying usage is re-written with `usage.cost_usd`, as every answer the
gateway writes has it.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import UpstreamError
from gateway.providers.base import Deployment, Operation, Reply, StreamState, usage_from_openai
from gateway.providers.errors import provider_error
from gateway.sse import Event, frame
from gateway.upstream import UpstreamRequest

PATHS = {Operation.CHAT: "/chat/completions", Operation.COMPLETION: "/completions", Operation.EMBEDDINGS: "/embeddings"}


def garbage(provider: str = "upstream") -> UpstreamError:
    return UpstreamError(f"{provider} answered with a malformed response", code="upstream_garbage")


def parse_object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise garbage() from None
    if not isinstance(data, dict):
        raise garbage()
    return data


def error_message(raw: bytes) -> str | None:
    """The `error.message` (or `message`, or `detail`) of a provider's JSON error body, if any."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]  # Gemini sometimes wraps errors in a list
    if not isinstance(data, dict):
        return None
    error = data.get("error", data)
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail")
        return message if isinstance(message, str) else None
    return error if isinstance(error, str) else None


class OpenAIStream:
    __slots__ = ("state",)

    def __init__(self, include_usage: bool) -> None:
        self.state = StreamState(include_usage=include_usage)

    def feed(self, event: Event) -> bytes:
        data = event.data
        if data == b"[DONE]":
            self.state.done = True
            return b""
        chunk = parse_object(data)
        if event.event == "error" or "error" in chunk:
            message = error_message(data) or "the provider reported an error mid-stream"
            raise provider_error("upstream", 500, message, None)
        state = self.state
        if state.response_id is None:
            state.response_id = chunk.get("id")
            state.response_model = chunk.get("model")
        usage = chunk.get("usage")
        choices = chunk.get("choices")
        if usage:
            state.usage = usage_from_openai(usage)
        if choices:
            for choice in choices:
                delta = choice.get("delta")
                text = delta.get("content") if delta else choice.get("text")
                if text:
                    state.add_text(text)
                if choice.get("finish_reason"):
                    state.finish_reason = choice["finish_reason"]
        elif usage and not state.include_usage:
            return b""
        if usage and state.usage is not None and state.cost is not None:  # the one chunk not relayed as it came: priced
            chunk["usage"] = {**usage, "cost_usd": state.cost(state.usage)}
            return frame(orjson.dumps(chunk))
        return frame(data)


class OpenAIWire:
    kind = "openai"

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"authorization": "Bearer " + key}

    def request(self, op: Operation, body: dict[str, Any], deployment: Deployment) -> UpstreamRequest:
        upstream = dict(body)
        upstream["model"] = deployment.model
        if upstream.get("stream"):
            options = upstream.get("stream_options")
            upstream["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
        return UpstreamRequest(deployment.base_url + PATHS[op], deployment.headers, orjson.dumps(upstream))

    def reply(self, op: Operation, raw: bytes) -> Reply:
        data = parse_object(raw)
        if op is not Operation.EMBEDDINGS and not isinstance(data.get("choices"), list):
            raise garbage()
        if op is Operation.EMBEDDINGS and not isinstance(data.get("data"), list):
            raise garbage()
        choices = data.get("choices") or [{}]
        finish = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
        return Reply(data=data, raw=raw, usage=usage_from_openai(data.get("usage")), finish_reason=finish)

    def stream(self, op: Operation, include_usage: bool) -> OpenAIStream:
        return OpenAIStream(include_usage)

    def error_message(self, raw: bytes) -> str | None:
        return error_message(raw)

    def retry_after(self, raw: bytes) -> str | None:
        return None  # the Retry-After header says it


def completion_text(reply: Reply) -> str:
    """All generated text of a reply (chat or legacy completion), for token estimates."""
    parts = []
    for choice in reply.data.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        text = message.get("content") if isinstance(message, dict) else choice.get("text") if isinstance(choice, dict) else None
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)
