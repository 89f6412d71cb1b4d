"""Kind `gemini`: Google AI's Gemini API (`{base_url}/v1beta/models/{model}:generateContent`).

Chat: system and developer messages become `systemInstruction`; the rest become `contents` with
roles `user` and `model`, consecutive messages of one role merged (a turn's function responses
must arrive together). Text parts become `text`, images `inlineData` (data URLs) or `fileData`
(other URLs, with a media type guessed from the name), `input_audio` `inlineData`. Assistant
`tool_calls` become `functionCall` parts and `tool` messages `functionResponse` parts, named after
the call they answer. `tools` become `functionDeclarations` (JSON Schema keys Gemini rejects are
dropped), `tool_choice` a `functionCallingConfig`; sampling parameters, `stop`, the token cap, `n`,
`seed` and `response_format` go into `generationConfig`. `user` has no counterpart and is dropped.

A safety block (`finishReason` SAFETY, PROHIBITED_CONTENT...; or `promptFeedback.blockReason` for
a blocked prompt, which has no candidates) answers 200 with finish_reason `content_filter`.
Gemini issues no tool-call ids: calls get `call_<n>`, numbered within the response.

Thinking: `reasoning_effort` becomes `generationConfig.thinkingConfig` with Google's own mapping
(none 0, minimal and low 1024, medium 8192, high 24576 tokens) and `includeThoughts`, so the thought
summaries come back as `message.reasoning_content` (streams: `delta.reasoning_content`), as do thought
parts whatever asked for them; they are never part of `content`.

Streams (`:streamGenerateContent?alt=sse`) carry whole response objects, each a slice of the text
(function calls arrive whole), the last with `finishReason` and the final `usageMetadata`; there
is no end marker, so a stream is complete once every candidate has finished.

Embeddings go through `:batchEmbedContents`, one request per input; Gemini reports no usage for
them, so it is counted (and marked estimated) by the gateway.
"""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from gateway.errors import BadRequest, GatewayError
from gateway.providers.base import Deployment, Operation, Reply, StreamState, Usage
from gateway.providers.errors import provider_error
from gateway.providers.openai import error_message, garbage, parse_object
from gateway.providers.shapes import (
    Chunks,
    choice,
    completion,
    data_url,
    embeddings,
    field,
    function_of,
    image_url,
    parts_of,
    reasoning_budget,
    stop_sequences,
    text_of,
    token_cap,
    tool_arguments,
    tool_call,
    tool_calls_of,
    unsupported_operation,
    unsupported_part,
)
from gateway.sse import Event
from gateway.upstream import UpstreamRequest

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"

FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"})
UNSUPPORTED_SCHEMA_KEYS = frozenset({"$schema", "additionalProperties"})
TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
THINKING_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}  # reasoning_effort -> tokens
GENERATION = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "n": "candidateCount",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}


# ---- request ---------------------------------------------------------------------------------


def _part(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind == "text":
        return {"text": part["text"]} if part.get("text") else None
    if kind == "image_url":
        url = image_url(part)
        inline = data_url(url)
        if inline is None:
            return {"fileData": {"mimeType": mimetypes.guess_type(url)[0] or "image/jpeg", "fileUri": url}}
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    if kind == "input_audio" and isinstance(part.get("input_audio"), dict):
        audio = part["input_audio"]
        return {"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}", "data": audio.get("data", "")}}
    raise unsupported_part("gemini", part)


def _parts(content: Any) -> list[dict[str, Any]]:
    return [p for part in parts_of(content) if (p := _part(part)) is not None]


def _function_response(content: Any) -> dict[str, Any]:
    text = text_of(content)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = text
    return value if isinstance(value, dict) else {"output": value}


def contents(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(systemInstruction parts, contents) for OpenAI `messages`."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the responses that follow
    for message in messages if isinstance(messages, list) else []:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.extend(_parts(message.get("content")))
            continue
        if role == "user":
            turn_role, parts = "user", _parts(message.get("content"))
        elif role == "assistant":
            turn_role, parts = "model", _parts(message.get("content"))
            for call in tool_calls_of(message):
                name = call["function"].get("name") or ""
                names[call.get("id") or ""] = name
                parts.append({"functionCall": {"name": name, "args": tool_arguments(call)}})
        elif role == "tool":
            name = names.get(message.get("tool_call_id") or "") or message.get("name") or ""
            turn_role, parts = "user", [{"functionResponse": {"name": name, "response": _function_response(message.get("content"))}}]
        else:
            raise BadRequest(f"Messages with role {role!r} are not supported by providers of kind 'gemini'.", param="messages")
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["parts"].extend(parts)
        else:
            turns.append({"role": turn_role, "parts": parts})
    return system, turns


def schema(value: Any) -> Any:
    """A JSON Schema with the keys Gemini's OpenAPI-subset schema rejects removed, at any depth."""
    if isinstance(value, dict):
        return {k: schema(v) for k, v in value.items() if k not in UNSUPPORTED_SCHEMA_KEYS}
    if isinstance(value, list):
        return [schema(v) for v in value]
    return value


def _declaration(tool: Any) -> dict[str, Any]:
    function = function_of(tool)
    out: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    parameters = function.get("parameters")
    if isinstance(parameters, dict) and parameters.get("properties"):  # Gemini refuses an empty object schema
        out["parameters"] = schema(parameters)
    return out


def _tool_config(wanted: Any) -> dict[str, Any] | None:
    if isinstance(wanted, dict):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [function_of(wanted)["name"]]}}
    mode = TOOL_MODES.get(wanted or "")
    return {"functionCallingConfig": {"mode": mode}} if mode else None


def generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config = {theirs: body[ours] for ours, theirs in GENERATION.items() if body.get(ours) is not None}
    if (cap := token_cap(body)) is not None:
        config["maxOutputTokens"] = cap
    if stop := stop_sequences(body):
        config["stopSequences"] = stop
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    json_schema = response_format.get("json_schema") if kind == "json_schema" and isinstance(response_format, dict) else None
    if isinstance(json_schema, dict) and isinstance(json_schema.get("schema"), dict):
        config["responseSchema"] = schema(json_schema["schema"])
    budget = reasoning_budget(body, THINKING_BUDGETS)
    if budget is not None:
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": True} if budget else {"thinkingBudget": 0}
    return config


def generate_request(body: dict[str, Any]) -> dict[str, Any]:
    system, turns = contents(body.get("messages"))
    out: dict[str, Any] = {"contents": turns}
    if system:
        out["systemInstruction"] = {"parts": system}
    if config := generation_config(body):
        out["generationConfig"] = config
    if tools := body.get("tools"):
        out["tools"] = [{"functionDeclarations": [_declaration(tool) for tool in tools]}]
        if tool_config := _tool_config(body.get("tool_choice")):
            out["toolConfig"] = tool_config
    return out


def embed_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("Providers of kind 'gemini' embed text: `input` must be a string or a list of strings.", param="input")
    extra = {"outputDimensionality": body["dimensions"]} if isinstance(body.get("dimensions"), int) else {}
    return {"requests": [{"model": f"models/{model}", "content": {"parts": [{"text": t}]}, **extra} for t in texts]}


# ---- response --------------------------------------------------------------------------------


def usage_of(meta: Any) -> Usage | None:
    if not isinstance(meta, dict):
        return None
    return Usage(
        prompt_tokens=int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0),
        completion_tokens=int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0),
        cached_tokens=int(meta.get("cachedContentTokenCount") or 0),
    )


def finish_reason(reason: Any, called: bool) -> str | None:
    if not reason:
        return None
    if reason in FILTERED:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if called else "stop"


def _candidate_parts(candidate: dict[str, Any], first_call: int) -> tuple[str, list[dict[str, Any]], str]:
    """The visible text, the function calls (numbered from `first_call`) and the thought summaries
    (text parts marked `thought`) of one candidate."""
    content = field(candidate, "content")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in content.get("parts") or []:
        if not isinstance(part, dict):
            continue
        if part.get("thought"):
            if isinstance(part.get("text"), str):
                thoughts.append(part["text"])
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        call = part.get("functionCall")
        if isinstance(call, dict):
            call_id = call.get("id") or f"call_{first_call + len(calls)}"
            calls.append(tool_call(call_id, call.get("name") or "", orjson.dumps(call.get("args") or {})))
    return "".join(texts), calls, "".join(thoughts)


def _candidates(data: dict[str, Any]) -> list[dict[str, Any]]:
    candidates = data.get("candidates") or []
    if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
        raise garbage()
    return candidates


def _blocked(data: dict[str, Any]) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _response_id(data: dict[str, Any]) -> str:
    return data.get("responseId") or "chatcmpl-" + uuid.uuid4().hex


def chat_reply(raw: bytes) -> Reply:
    data = parse_object(raw)
    if "candidates" not in data and not _blocked(data):
        raise garbage()
    choices, calls_so_far = [], 0
    for i, candidate in enumerate(_candidates(data)):
        text, calls, thoughts = _candidate_parts(candidate, calls_so_far)
        calls_so_far += len(calls)
        choices.append(choice(candidate.get("index", i), text, calls, finish_reason(candidate.get("finishReason"), bool(calls))))
        if thoughts:
            choices[-1]["message"]["reasoning_content"] = thoughts
    if not choices:
        choices = [choice(0, "", [], "content_filter")]
    usage = usage_of(data.get("usageMetadata"))
    answer = completion(_response_id(data), data.get("modelVersion") or "", choices, usage)
    return Reply(data=answer, raw=None, usage=usage, finish_reason=choices[0]["finish_reason"])


def embeddings_reply(raw: bytes) -> Reply:
    items = parse_object(raw).get("embeddings")
    if not isinstance(items, list) or not all(isinstance(e, dict) and isinstance(e.get("values"), list) for e in items):
        raise garbage()
    return Reply(data=embeddings([e["values"] for e in items]), raw=None, usage=None)


def retry_delay(raw: bytes) -> str | None:
    """Seconds to wait, from an error body's `google.rpc.RetryInfo` detail (Gemini's 429s carry it,
    `"retryDelay": "37s"`, and no Retry-After header), as a Retry-After value."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                return delay[:-1]  # a Duration: seconds with up to nine decimals
    return None


def stream_error(data: dict[str, Any]) -> GatewayError:
    error = field(data, "error")
    code = error.get("code")
    status = code if isinstance(code, int) else 500
    return provider_error("gemini", status, error.get("message") or "the provider reported an error mid-stream", None)


class GeminiStream:
    __slots__ = ("_called", "_calls", "_chunks", "_unfinished", "_usage_sent", "state")

    def __init__(self, include_usage: bool) -> None:
        self.state = StreamState(include_usage=include_usage)
        self._chunks = Chunks(self.state)
        self._calls = 0  # function calls so far, for their ids and OpenAI indexes
        self._called: set[int] = set()  # candidates that called a function
        self._unfinished: set[int] = set()
        self._usage_sent = False

    def feed(self, event: Event) -> bytes:
        data = parse_object(event.data)
        if "error" in data:
            raise stream_error(data)
        state = self.state
        if state.response_id is None:
            state.response_id, state.response_model = _response_id(data), data.get("modelVersion")
        if "usageMetadata" in data:
            state.usage = usage_of(data["usageMetadata"])
        candidates = _candidates(data)
        out = [self._candidate(candidate, i) for i, candidate in enumerate(candidates)]
        if not candidates and _blocked(data):
            state.finish_reason = "content_filter"
            out.append(self._chunks.delta({}, "content_filter"))
        if state.finish_reason and not self._unfinished and not self._usage_sent and state.usage is not None:
            self._usage_sent = True
            out.append(self._chunks.usage())
        return b"".join(out)

    def _candidate(self, candidate: dict[str, Any], position: int) -> bytes:
        index = candidate.get("index", position)
        text, calls, thoughts = _candidate_parts(candidate, self._calls)
        out = [self._chunks.delta({"reasoning_content": thoughts}, index=index)] if thoughts else []
        if text:
            out.append(self._chunks.text(text, index))
        if calls:
            self._called.add(index)
            deltas = [{"index": self._calls + i, **call} for i, call in enumerate(calls)]
            self._calls += len(calls)
            out.append(self._chunks.delta({"tool_calls": deltas}, index=index))
        finish = finish_reason(candidate.get("finishReason"), index in self._called)
        if finish is None:
            self._unfinished.add(index)
        else:
            self._unfinished.discard(index)
            self.state.finish_reason = finish
            out.append(self._chunks.delta({}, finish, index))
        return b"".join(out)


class GeminiWire:
    kind = "gemini"

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    def request(self, op: Operation, body: dict[str, Any], deployment: Deployment) -> UpstreamRequest:
        model_url = f"{deployment.base_url}/v1beta/models/{deployment.model}"
        if op is Operation.EMBEDDINGS:
            embed = embed_request(body, deployment.model)
            return UpstreamRequest(model_url + ":batchEmbedContents", deployment.headers, orjson.dumps(embed))
        if op is not Operation.CHAT:
            raise unsupported_operation(self.kind, op)
        method = ":streamGenerateContent?alt=sse" if body.get("stream") else ":generateContent"
        return UpstreamRequest(model_url + method, deployment.headers, orjson.dumps(generate_request(body)))

    def reply(self, op: Operation, raw: bytes) -> Reply:
        return REPLIES[op](raw)

    def stream(self, op: Operation, include_usage: bool) -> GeminiStream:
        return GeminiStream(include_usage)

    def error_message(self, raw: bytes) -> str | None:
        return error_message(raw)

    def retry_after(self, raw: bytes) -> str | None:
        return retry_delay(raw)


REPLIES: dict[Operation, Callable[[bytes], Reply]] = {Operation.CHAT: chat_reply, Operation.EMBEDDINGS: embeddings_reply}
