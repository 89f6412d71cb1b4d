"""A cached answer, kept in one canonical form from which both reply shapes are built.

The form is the final OpenAI object (`chat.completion`, `text_completion` or the embeddings list),
tool calls included, with its usage already rewritten as a hit reports it: every prompt token
cached, and `cost_usd` 0.0 where the original carried a cost. A non-streaming hit is those bytes
as they are; a streaming hit is a short SSE stream synthesised from them (`replay`). A streamed
miss is turned into the same object by `Assembler`, which folds the chunks as they pass.

Stored value: one header line, the JSON array `[prompt_tokens, completion_tokens, priced (0|1), id,
model]` (so a hit fills its record from a few bytes, never parsing the answer), then the object's JSON.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from gateway.providers.base import Usage, usage_from_openai
from gateway.sse import DONE, SSEDecoder, frame


class Entry(NamedTuple):
    usage: Usage  # as a hit reports it: every prompt token cached
    priced: bool  # whether the original answer was priced
    body: bytes  # the JSON reply body
    response_id: str | None
    response_model: str | None


def hit_usage(usage: Usage, priced: bool) -> dict[str, Any]:
    """OpenAI usage as a hit (or a coalesced follower) reports it: every prompt token cached, cost 0."""
    hit = Usage(usage.prompt_tokens, usage.completion_tokens, cached_tokens=usage.prompt_tokens).as_openai()
    if priced:
        hit["cost_usd"] = 0.0
    return hit


def as_reused(body: bytes) -> bytes:
    """An answer's JSON, or a piece of its SSE stream (whole events, as the relay sends them), with
    any usage in it reported as `hit_usage` does: what a coalesced follower gets of the leader's bytes."""
    if b'"usage"' not in body:
        return body
    if not body.startswith((b"data:", b"event:")):
        return _reused(body)
    events = body.split(b"\n\n")
    for i, event in enumerate(events):
        if event.startswith(b"data: {") and b'"usage"' in event:
            events[i] = b"data: " + _reused(event[6:])
    return b"\n\n".join(events)


def _reused(raw: bytes) -> bytes:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    usage = usage_from_openai(data.get("usage")) if isinstance(data, dict) else None
    if usage is None:
        return raw
    return orjson.dumps({**data, "usage": hit_usage(usage, "cost_usd" in data["usage"])})


def encode(data: dict[str, Any], usage: Usage, priced: bool) -> bytes:
    hit = hit_usage(usage, priced)
    header = orjson.dumps([usage.prompt_tokens, usage.completion_tokens, int(priced), data.get("id"), data.get("model")])
    return header + b"\n" + orjson.dumps({**data, "usage": hit})


def decode(value: bytes) -> Entry:
    """Raises ValueError on a damaged value."""
    header, _, body = value.partition(b"\n")
    fields = orjson.loads(header)
    if not isinstance(fields, list) or len(fields) != 5 or not all(type(n) is int for n in fields[:3]):
        raise ValueError("not a cache entry")
    prompt, completion, priced, response_id, response_model = fields
    return Entry(Usage(prompt, completion, cached_tokens=prompt), bool(priced), body, response_id, response_model)


def replay(body: bytes, include_usage: bool) -> list[bytes]:
    """SSE events that a streaming client would have received for this answer, ending [DONE]."""
    data = orjson.loads(body)
    chat = data.get("object") == "chat.completion"
    head = {"id": data.get("id"), "object": "chat.completion.chunk" if chat else "text_completion", "created": data.get("created")}
    head["model"] = data.get("model")
    if data.get("system_fingerprint") is not None:
        head["system_fingerprint"] = data["system_fingerprint"]
    events = []
    for choice in data.get("choices") or []:
        index = choice.get("index", 0)
        parts = _chat_deltas(choice) if chat else [{"text": choice.get("text") or ""}]
        for part in parts:
            events.append(frame(orjson.dumps({**head, "choices": [_choice(chat, index, part, None, None)]})))
        last = _choice(chat, index, {} if chat else {"text": ""}, choice.get("finish_reason"), choice.get("logprobs"))
        events.append(frame(orjson.dumps({**head, "choices": [last]})))
    if include_usage:
        events.append(frame(orjson.dumps({**head, "choices": [], "usage": data.get("usage")})))
    events.append(DONE)
    return events


def _chat_deltas(choice: dict[str, Any]) -> list[dict[str, Any]]:
    message = choice.get("message") or {}
    deltas: list[dict[str, Any]] = [{name: message[name]} for name in ("reasoning_content", "thinking_blocks") if message.get(name)]
    content: dict[str, Any] = {"content": message.get("content") or ""}
    if message.get("refusal") is not None:
        content["refusal"] = message["refusal"]
    deltas.append(content)
    deltas[0] = {"role": message.get("role") or "assistant", **deltas[0]}
    calls = message.get("tool_calls") or []
    if calls:
        deltas.append({"tool_calls": [{**call, "index": i} for i, call in enumerate(calls)]})
    return deltas


def _choice(chat: bool, index: int, part: dict[str, Any], finish: str | None, logprobs: Any) -> dict[str, Any]:
    if chat:
        return {"index": index, "delta": part, "logprobs": logprobs, "finish_reason": finish}
    return {"index": index, **part, "logprobs": logprobs, "finish_reason": finish}


class Assembler:
    """Folds a relayed OpenAI stream (bytes as sent to the client) into the final answer object."""

    __slots__ = ("_choices", "_decoder", "_head", "done", "failed")

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self.done = False
        self.failed = False

    def feed(self, piece: bytes) -> None:
        for event in self._decoder.feed(piece):
            if event.event == "error":
                self.failed = True
            elif event.data == b"[DONE]":
                self.done = True
            elif not self.failed:
                try:
                    self._chunk(orjson.loads(event.data))
                except (orjson.JSONDecodeError, AttributeError, TypeError):
                    self.failed = True  # not a shape we can fold: the answer is relayed, not cached

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if not self._head:
            self._head = {k: chunk.get(k) for k in ("id", "object", "created", "model", "system_fingerprint")}
        for choice in chunk.get("choices") or []:
            into = self._choices.setdefault(choice.get("index", 0), {"text": [], "calls": {}})
            delta = choice.get("delta")
            if delta is None:  # legacy completion chunk
                into["text"].append(choice.get("text") or "")
            else:
                self._delta(into, delta)
            if choice.get("finish_reason"):
                into["finish_reason"] = choice["finish_reason"]
            _merge_logprobs(into, choice.get("logprobs"))

    def _delta(self, into: dict[str, Any], delta: dict[str, Any]) -> None:
        if delta.get("role"):
            into["role"] = delta["role"]
        if delta.get("content"):
            into["text"].append(delta["content"])
        if delta.get("refusal"):
            into["refusal"] = into.get("refusal", "") + delta["refusal"]
        if delta.get("reasoning_content"):  # a provider's reasoning (Anthropic's thinking, translated)
            into.setdefault("reasoning", []).append(delta["reasoning_content"])
        if isinstance(delta.get("thinking_blocks"), list):
            into.setdefault("thinking_blocks", []).extend(delta["thinking_blocks"])
        for call in delta.get("tool_calls") or []:
            slot = into["calls"].setdefault(call.get("index", 0), {"id": None, "type": "function", "name": "", "arguments": []})
            function = call.get("function") or {}
            slot["id"] = call.get("id") or slot["id"]
            slot["type"] = call.get("type") or slot["type"]
            slot["name"] += function.get("name") or ""
            slot["arguments"].append(function.get("arguments") or "")

    def final(self) -> dict[str, Any] | None:
        """The complete answer, or None if the stream did not end properly."""
        if not self.done or self.failed or not self._head:
            return None
        chat = self._head.get("object") == "chat.completion.chunk"
        head = {k: v for k, v in self._head.items() if v is not None or k != "system_fingerprint"}
        head["object"] = "chat.completion" if chat else "text_completion"
        choices = [self._final_choice(chat, i, c) for i, c in sorted(self._choices.items())]
        return {**head, "choices": choices}

    @staticmethod
    def _final_choice(chat: bool, index: int, c: dict[str, Any]) -> dict[str, Any]:
        text = "".join(c["text"])
        out: dict[str, Any] = {"index": index}
        if chat:
            calls = [
                {"id": s["id"], "type": s["type"], "function": {"name": s["name"], "arguments": "".join(s["arguments"])}}
                for _, s in sorted(c["calls"].items())
            ]
            message: dict[str, Any] = {"role": c.get("role", "assistant"), "content": text if text or not calls else None}
            message["refusal"] = c.get("refusal")
            if calls:
                message["tool_calls"] = calls
            if c.get("reasoning"):
                message["reasoning_content"] = "".join(c["reasoning"])
            if c.get("thinking_blocks"):
                message["thinking_blocks"] = c["thinking_blocks"]
            out["message"] = message
        else:
            out["text"] = text
        out["logprobs"] = c.get("logprobs")
        out["finish_reason"] = c.get("finish_reason")
        return out


def _merge_logprobs(into: dict[str, Any], logprobs: Any) -> None:
    if not isinstance(logprobs, dict):
        return
    merged = into.setdefault("logprobs", {})
    for name, value in logprobs.items():
        if isinstance(value, list):
            merged.setdefault(name, []).extend(value)
        elif name not in merged:
            merged[name] = value
