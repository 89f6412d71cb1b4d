"""OpenAI shapes shared by the wire formats that translate (anthropic, gemini).

Reading a client's chat request (message text, data URLs, tool-call arguments, `stop`, the token
cap) and writing OpenAI answers (completion objects, stream chunks, embedding lists) happen here
once, so each provider module holds only its own mapping.
"""

from __future__ import annotations

import struct
import time
from base64 import b64encode
from typing import Any

import orjson

from gateway.errors import BadRequest
from gateway.providers.base import Operation, StreamState, Usage
from gateway.sse import frame


def unsupported_operation(kind: str, op: Operation) -> BadRequest:
    return BadRequest(f"Models served by providers of kind {kind!r} do not support {op.value} requests.", code="unsupported_operation")


def single_choice(kind: str, body: dict[str, Any]) -> None:
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise BadRequest(f"Providers of kind {kind!r} return one choice per request; `n` must be 1.", param="n")


def field(data: dict[str, Any], key: str) -> dict[str, Any]:
    """`data[key]` when it is an object, else an empty one (for reading optional nested fields)."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def text_of(content: Any) -> str:
    """A message's text: the string itself, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def parts_of(content: Any) -> list[dict[str, Any]]:
    """A message's content as a list of OpenAI parts (a string is one text part)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        return [p for p in content if isinstance(p, dict)]
    return []


def image_url(part: dict[str, Any]) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise BadRequest("An image_url part needs a url.", param="messages")
    return url


def data_url(url: str) -> tuple[str, str] | None:
    """("image/png", "<base64>") for a base64 data URL, None for any other URL."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64":
        raise BadRequest("Image data URLs must be base64-encoded (data:<type>;base64,...).", param="messages")
    return media_type or "application/octet-stream", data


def unsupported_part(kind: str, part: dict[str, Any]) -> BadRequest:
    return BadRequest(f"Content parts of type {part.get('type')!r} are not supported by providers of kind {kind!r}.", param="messages")


def tool_calls_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An assistant message's tool calls, each an object with a `function` object."""
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls):
        raise BadRequest("`tool_calls` must be a list of objects, each with a `function` object.", param="messages")
    return calls


def tool_arguments(call: Any) -> dict[str, Any]:
    """The parsed arguments object of an assistant message's tool call."""
    function = call.get("function") if isinstance(call, dict) else None
    raw = function.get("arguments") if isinstance(function, dict) else None
    if not raw:
        return {}
    try:
        args = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        raise BadRequest("Tool call arguments must be a JSON object.", param="messages") from None
    if not isinstance(args, dict):
        raise BadRequest("Tool call arguments must be a JSON object.", param="messages")
    return args


def function_of(tool: Any) -> dict[str, Any]:
    """The `function` object of a `tools` entry (which must be a function tool)."""
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest("Only function tools with a name are supported.", param="tools")
    return function


def stop_sequences(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and stop:
        return [s for s in stop if isinstance(s, str)]
    return None


CAP_FIELDS = ("max_completion_tokens", "max_tokens")  # in order of precedence


def _positive(body: dict[str, Any], param: str) -> int | None:
    """`body[param]` as a positive integer, None when absent or null; anything else is a 400, since a
    cap of 0 or -1 would otherwise reserve nothing against a budget."""
    value = body.get(param)
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise BadRequest(f"'{param}' must be a positive integer.", param=param, code="invalid_value")
    return value


def token_caps(body: dict[str, Any]) -> dict[str, int]:
    """Each output cap the request states ({field: tokens}, in precedence order; a null is absent)."""
    return {param: cap for param in CAP_FIELDS if (cap := _positive(body, param)) is not None}


def token_cap(body: dict[str, Any]) -> int | None:
    """The output cap a translating provider is sent: `max_completion_tokens`, else `max_tokens`."""
    return next(iter(token_caps(body).values()), None)


def choices(body: dict[str, Any], op: Operation) -> int:
    """How many answers the provider generates, and bills: `n` (Gemini's candidateCount), or for a
    completion `best_of` when larger (generated server-side, though only `n` are returned)."""
    if op is Operation.EMBEDDINGS:
        return 1
    count = _positive(body, "n") or 1
    if op is Operation.COMPLETION:
        count = max(count, _positive(body, "best_of") or 1)
    return count


def reasoning_budget(body: dict[str, Any], budgets: dict[str, int]) -> int | None:
    """The thinking budget in tokens a request's `reasoning_effort` asks of a provider (`budgets`: its
    mapping), None without one; an effort the provider has no budget for is a 400."""
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in budgets:
        raise BadRequest(f"reasoning_effort must be one of {', '.join(budgets)}, not {effort!r}.", param="reasoning_effort")
    return budgets[effort]


def tool_call(call_id: str, name: str, arguments: bytes | str) -> dict[str, Any]:
    args = arguments.decode() if isinstance(arguments, bytes) else arguments
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def completion(response_id: str, model: str, choices: list[dict[str, Any]], usage: Usage | None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": response_id, "object": "chat.completion", "created": int(time.time()), "model": model, "choices": choices}
    if usage is not None:
        data["usage"] = usage.as_openai()
    return data


def choice(index: int, text: str | None, tool_calls: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


class Chunks:
    """Writes one stream's OpenAI chunks; the first delta of each choice carries the assistant role."""

    __slots__ = ("_created", "_roles", "state")

    def __init__(self, state: StreamState) -> None:
        self.state = state
        self._created = int(time.time())
        self._roles: set[int] = set()

    def _frame(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.state.response_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.state.response_model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = self.state.usage_json(usage)
        return frame(orjson.dumps(chunk))

    def delta(self, delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
        if index not in self._roles:
            self._roles.add(index)
            delta = {"role": "assistant", **delta}
        return self._frame([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def text(self, text: str, index: int = 0) -> bytes:
        self.state.add_text(text)
        return self.delta({"content": text}, index=index)

    def usage(self) -> bytes:
        """The closing usage-only chunk, when the client asked for one and usage is known."""
        if not self.state.include_usage or self.state.usage is None:
            return b""
        return self._frame([], self.state.usage)


def embeddings(vectors: list[list[float]]) -> dict[str, Any]:
    data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
    return {"object": "list", "data": data, "model": ""}


def finish_embeddings(data: dict[str, Any], model: str, encoding_format: Any) -> None:
    """Complete a translated embeddings answer with what only the request knows: the model, and
    base64 vectors (little-endian float32, as OpenAI sends them) when the client asked for them."""
    data["model"] = data.get("model") or model
    if encoding_format != "base64":
        return
    for item in data.get("data") or []:
        vector = item.get("embedding")
        if isinstance(vector, list):
            item["embedding"] = b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
