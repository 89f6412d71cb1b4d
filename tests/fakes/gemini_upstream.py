"""A fake Gemini API (Google AI, v1beta) on a real loopback socket, speaking its exact wire format.

It reuses `FakeOpenAI`'s server (thread, recording, scripting, TCP fault knobs) and answers

    POST /v1beta/models/{model}:generateContent
    POST /v1beta/models/{model}:streamGenerateContent?alt=sse   (events end in CRLF CRLF, as Google's do)
    POST /v1beta/models/{model}:batchEmbedContents

Like the real API it refuses a missing `x-goog-api-key` (403 PERMISSION_DENIED) and what the
gateway must never send (400 INVALID_ARGUMENT): unknown fields (OpenAI names such as `max_tokens`
in `generationConfig`), roles other than user/model, empty parts, parts with no or two data
fields, `additionalProperties` in a function schema, function responses without a name, a stream
request without `alt=sse`, and an embedding request whose `model` is not the one in the path.

Answers are deterministic: "echo: " + the text of the last user turn; with `tools` and CALL_TOOL in
that text, a `functionCall` of the first declared function with TOOL_ARGS. Token counts are
whitespace-separated words. Streams send the text in `chunks` pieces, every event carrying the
usage so far; the last carries `finishReason` and the final `usageMetadata`. Embeddings are
`expected_embedding(text, outputDimensionality or 8)`. With `thinkingConfig.includeThoughts` and a
budget above 0, the text answer starts with a thought part ("Thinking about: " + that text,
`"thought": true`; streamed whole in the first event) counted as `thoughtsTokenCount`; a budget
outside 0..24576 is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes import openai_upstream
from tests.fakes.anthropic_upstream import split
from tests.fakes.openai_upstream import FakeOpenAI, expected_embedding

TOOL_ARGS = {"city": "Paris", "days": 3}
STATUS = {
    400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
}  # fmt: skip
METHODS = ("generateContent", "streamGenerateContent", "batchEmbedContents")
PART_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse")
TOP_FIELDS = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig", "safetySettings", "cachedContent"}
GENERATION_FIELDS = {
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences", "seed",
    "presencePenalty", "frequencyPenalty", "responseMimeType", "responseSchema", "thinkingConfig",
}  # fmt: skip
SAFETY_RATINGS = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]


@dataclass
class Behavior(openai_upstream.Behavior):
    """`openai_upstream.Behavior` plus Gemini's own knobs."""

    message: str | None = None  # the error message, for status >= 400
    finish_reason: str | None = None  # e.g. "SAFETY": the candidate ends so, with no content
    prompt_blocked: bool = False  # answer promptFeedback.blockReason = SAFETY and no candidates
    cached: int = 0  # cachedContentTokenCount
    thoughts: int = 0  # thoughtsTokenCount
    retry_delay: str | None = None  # an error's google.rpc.RetryInfo retryDelay (a Duration: "37s", "1.5s")


class InvalidArgument(Exception):
    pass


def error_body(status: int, message: str | None = None, retry_delay: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message or "Internal error encountered.", "status": STATUS.get(status, "UNKNOWN")}
    if retry_delay is not None:  # as the Gemini API sends it with RESOURCE_EXHAUSTED (and no Retry-After header)
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generate_content_requests"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
        ]
    return {"error": error}


def _words(text: str) -> int:
    return len(text.split())


def _find_key(value: Any, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_find_key(v, key) for v in value.values())
    return isinstance(value, list) and any(_find_key(v, key) for v in value)


def _check_part(part: Any) -> None:
    fields = [f for f in PART_FIELDS if isinstance(part, dict) and f in part]
    if len(fields) != 1:
        raise InvalidArgument("Invalid value at 'contents.parts' (oneof field 'data' must be set exactly once)")
    value = part[fields[0]]
    if fields[0] == "inlineData" and not (value.get("mimeType") and value.get("data")):
        raise InvalidArgument("Invalid value at 'contents.parts.inline_data': mimeType and data are required")
    if fields[0] == "functionResponse" and not (value.get("name") and isinstance(value.get("response"), dict)):
        raise InvalidArgument("function_response.name and function_response.response are required")


def validate(req: Any) -> None:
    if not isinstance(req, dict):
        raise InvalidArgument("Invalid JSON payload received.")
    for name in set(req) - TOP_FIELDS:
        raise InvalidArgument(f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.')
    for name in set(req.get("generationConfig") or {}) - GENERATION_FIELDS:
        raise InvalidArgument(f"Invalid JSON payload received. Unknown name \"{name}\" at 'generation_config': Cannot find field.")
    contents = req.get("contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidArgument("* GenerateContentRequest.contents: contents is not specified")
    for content in contents:
        if content.get("role") not in ("user", "model"):
            raise InvalidArgument("Please use a valid role: user, model.")
        if not content.get("parts"):
            raise InvalidArgument("* GenerateContentRequest.contents.parts: contents.parts must not be empty.")
        for part in content["parts"]:
            _check_part(part)
    for part in (req.get("systemInstruction") or {}).get("parts", []):
        _check_part(part)
    thinking = (req.get("generationConfig") or {}).get("thinkingConfig")
    if thinking is not None:
        budget = thinking.get("thinkingBudget") if isinstance(thinking, dict) else None
        if set(thinking or {}) - {"thinkingBudget", "includeThoughts"} or not isinstance(budget, int) or not 0 <= budget <= 24576:
            raise InvalidArgument("Unable to submit request because thinking budget is out of range; supported values are 0 to 24576.")
    if _find_key(req.get("tools"), "additionalProperties"):
        raise InvalidArgument("Invalid JSON payload received. Unknown name \"additionalProperties\" at 'tools[0].function_declarations'")


class FakeGemini(FakeOpenAI):
    """A fake Gemini on 127.0.0.1 (see the module docstring)."""

    base_path = ""
    behavior_type = Behavior

    def _scripted_error(self, n: int, behavior: Behavior) -> web.Response:
        return self._error_reply(n, behavior, behavior.status, behavior.message)

    async def _respond(
        self, request: web.Request, parsed: Any, raw: bytes, behavior: openai_upstream.Behavior, n: int
    ) -> web.StreamResponse:
        b, scripted = self._scripted(behavior, n)
        if scripted is not None:
            return scripted
        prefix, _, rest = request.path.partition("/v1beta/models/")
        model, _, method = rest.partition(":")
        if request.method != "POST" or prefix or not model or method not in METHODS:
            return self._error_reply(n, b, 404, f"Requested entity was not found: {request.method} {request.path}")
        if not request.headers.get("x-goog-api-key"):
            return self._error_reply(n, b, 403, "Method doesn't allow unregistered callers (callers without established identity).")
        try:
            if method == "batchEmbedContents":
                return self._json(n, b, self._embed(parsed, model))
            validate(parsed)
            if method == "streamGenerateContent" and request.query.get("alt") != "sse":
                raise InvalidArgument("this fake streams only with alt=sse")
        except InvalidArgument as exc:
            return self._error_reply(n, b, 400, str(exc))
        answer = self._answer(parsed, model, b, n)
        if method == "streamGenerateContent":
            return await self._stream(request, n, b, self._events(answer, b))
        return self._json(n, b, answer)

    def _error_reply(self, n: int, behavior: Behavior, status: int, message: str | None) -> web.Response:
        body = json.dumps(error_body(status, message, behavior.retry_delay)).encode()
        return web.Response(status=status, body=body, headers=self._headers(n, behavior, "application/json"))

    @staticmethod
    def _answer(req: dict[str, Any], model: str, b: Behavior, n: int) -> dict[str, Any]:
        texts = [p.get("text", "") for c in req["contents"] for p in c["parts"]]
        texts += [p.get("text", "") for p in (req.get("systemInstruction") or {}).get("parts", [])]
        prompt = sum(_words(t) for t in texts)
        head = {"modelVersion": model, "responseId": f"resp-fake-{n}"}
        if b.prompt_blocked:
            feedback = {"blockReason": "SAFETY", "safetyRatings": SAFETY_RATINGS}
            return {"promptFeedback": feedback, "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt}, **head}
        last_user = next(c for c in reversed(req["contents"]) if c["role"] == "user")
        user_text = " ".join(p["text"] for p in last_user["parts"] if "text" in p)
        declarations = [d for t in req.get("tools") or [] for d in t.get("functionDeclarations", [])]
        candidate: dict[str, Any] = {"index": 0}
        if b.finish_reason:
            candidate |= {"finishReason": b.finish_reason, "safetyRatings": SAFETY_RATINGS}
            output = 0
        elif declarations and "CALL_TOOL" in user_text:
            call = {"functionCall": {"name": declarations[0]["name"], "args": TOOL_ARGS}}
            candidate |= {"content": {"parts": [call], "role": "model"}, "finishReason": "STOP"}
            output = _words(json.dumps(TOOL_ARGS))
        else:
            text = "echo: " + user_text
            candidate |= {"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP"}
            output = _words(text)
        thinking = (req.get("generationConfig") or {}).get("thinkingConfig") or {}
        thoughts = b.thoughts
        if thinking.get("includeThoughts") and thinking.get("thinkingBudget") and "content" in candidate:
            thought = "Thinking about: " + user_text
            candidate["content"]["parts"].insert(0, {"text": thought, "thought": True})
            thoughts += _words(thought)
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output + thoughts}
        if b.cached:
            usage["cachedContentTokenCount"] = b.cached
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        return {"candidates": [candidate], "usageMetadata": usage, **head}

    @staticmethod
    def _events(answer: dict[str, Any], b: Behavior) -> list[bytes]:
        def event(obj: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\r\n\r\n"

        candidates = answer.get("candidates")
        every = ((candidates or [{}])[0].get("content") or {}).get("parts") or []
        thought = [p for p in every if p.get("thought")]
        parts = [p for p in every if not p.get("thought")]
        if not candidates or not parts or "text" not in parts[0]:
            return [event(answer)]  # blocks and function calls arrive whole
        usage = answer["usageMetadata"]
        early_usage = {"promptTokenCount": usage["promptTokenCount"], "totalTokenCount": usage["promptTokenCount"]}
        head = {k: answer[k] for k in ("modelVersion", "responseId")}
        pieces = [p for p in split(parts[0]["text"], b.chunks) if p]
        events = []
        if thought:
            first = {"content": {"parts": thought, "role": "model"}, "index": 0}
            events.append(event({"candidates": [first], "usageMetadata": early_usage, **head}))
        for i, piece in enumerate(pieces):
            candidate: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
            last = i == len(pieces) - 1
            if last:
                candidate["finishReason"] = candidates[0]["finishReason"]
            events.append(event({"candidates": [candidate], "usageMetadata": usage if last else early_usage, **head}))
        return events

    @staticmethod
    def _embed(req: Any, model: str) -> dict[str, Any]:
        requests = req.get("requests") if isinstance(req, dict) else None
        if not isinstance(requests, list) or not requests:
            raise InvalidArgument("* BatchEmbedContentsRequest.requests: requests is not specified")
        out = []
        for item in requests:
            if item.get("model") != f"models/{model}":
                raise InvalidArgument(f"Model {item.get('model')!r} does not match the model in the path, models/{model}")
            parts = (item.get("content") or {}).get("parts") or []
            text = " ".join(p.get("text", "") for p in parts)
            out.append({"values": expected_embedding(text, item.get("outputDimensionality") or 8)})
        return {"embeddings": out}
