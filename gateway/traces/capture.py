"""What a trace keeps of a request's and a response's content, per `capture_content`.

- `none`: no content at all; only the request parameters (temperature, max_tokens...) and counts.
- `metadata`: the shape without the text: each message's role, its length in characters and the
  names of the tools it calls; the tools offered; the parameters.
- `full`: the bodies, with secret-looking strings redacted and anything beyond `max_bytes`
  truncated behind a marker (the stored value stays valid JSON).

Redaction runs on every mode's output and is deliberately broad: a false positive costs a few
characters of a trace, a false negative leaks a credential into a database kept for months.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

MODES = ("none", "metadata", "full")
REDACTED = "[REDACTED]"
PARAMS = ("temperature", "max_tokens", "max_completion_tokens", "top_p", "frequency_penalty", "presence_penalty", "seed", "n", "stop")

# Each pattern runs only when its literal trigger is in the text: a substring search costs ~1 ns a
# character, while one alternation of every pattern cost ~0.2 us a character (40 us for a small chat
# request). A guard shared by several triggers (`k-`) saves their searches in the usual case, absence.
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL)
_KEY = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}")  # OpenAI, Anthropic, Stripe-style keys
_GITHUB = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")
_LITERAL_RULES: tuple[tuple[str, tuple[str, ...], re.Pattern[str]], ...] = (  # (guard, triggers within it, pattern)
    ("-----BEGIN", (), _PEM),
    ("k-", ("sk-", "pk-", "rk-"), _KEY),
    ("AKIA", (), re.compile(r"\bAKIA[0-9A-Z]{16}\b")),  # AWS access key id
    ("gh", (), _GITHUB),
    ("xox", (), re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}")),  # Slack
    ("AIza", (), re.compile(r"\bAIza[0-9A-Za-z_\-]{35}")),  # Google API keys
    ("eyJ", (), re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}")),  # JWTs
)
_BEARER = re.compile(r"\b(?i:bearer)\s+[A-Za-z0-9._~+/\-]{12,}=*")
# `password: x`, `"api_key": "x"`, also inside JSON-escaped text (\"token\": \"x\"); not `max_tokens`.
# Grouped by a guard each keyword contains; `access_token` and `access-token` need no search of
# their own: wherever one is followed by an assignment, so is the `token` it ends with.
_KEYWORDS = (("passw", ("password", "passwd")), ("secret", ("secret",)), ("key", ("api_key", "api-key", "apikey")), ("token", ("token",)))
_ASSIGNED = re.compile(
    r"(?P<keep>\b(?i:password|passwd|secret|api[_-]?key|access[_-]?token|token)[\\\"']*\s?[:=]\s?[\\\"']*)[^\s\\\"',}]{4,}"
)


def _followed(lowered: str, keyword: str, at: int) -> bool:
    """Is `keyword`, first found at `at` (or -1), followed somewhere by what could start an assignment?"""
    while at >= 0:
        after = lowered[at + len(keyword) : at + len(keyword) + 1]
        if after and after in "\"'\\:= ":
            return True
        at = lowered.find(keyword, at + 1)
    return False


def _assigned(lowered: str) -> bool:
    """Is some keyword followed by what could start an assignment (cheap pre-check for _ASSIGNED)?"""
    for guard, keywords in _KEYWORDS:
        at = lowered.find(guard)
        if at >= 0:  # each keyword contains the guard, so none starts before at - len(keyword)
            for keyword in keywords:
                if _followed(lowered, keyword, lowered.find(keyword, max(0, at - len(keyword)))):
                    return True
    return False


def _keep(match: re.Match[str]) -> str:
    return match.group("keep") + REDACTED


def redact(text: str) -> str:
    for guard, triggers, pattern in _LITERAL_RULES:
        if guard in text and (not triggers or any(t in text for t in triggers)):
            text = pattern.sub(REDACTED, text)
    lowered = text.lower()
    if "bearer" in lowered:
        text = _BEARER.sub(REDACTED, text)
        lowered = text.lower()
    if _assigned(lowered):
        text = _ASSIGNED.sub(_keep, text)
    return text


def params(body: dict[str, Any] | None) -> dict[str, Any]:
    if not body:
        return {}
    return {k: body[k] for k in PARAMS if body.get(k) is not None}


def to_json(value: Any, max_bytes: int) -> str:
    """Redacted JSON text of `value`, replaced by a truncation marker object when over `max_bytes`."""
    return clip(orjson.dumps(value).decode(), max_bytes)


def clip(text: str, max_bytes: int) -> str:
    """JSON text redacted, and replaced by a truncation marker object when over `max_bytes`."""
    text = redact(text)
    size = len(text.encode())
    if size <= max_bytes:
        return text
    head = text.encode()[:max_bytes].decode(errors="ignore")
    return orjson.dumps({"truncated": True, "bytes": size, "text": head + f"...[truncated {size - max_bytes} bytes]"}).decode()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _functions(items: Any) -> list[dict[str, Any]]:
    """The `function` objects of tool calls or tools. Admission checked their shape; a record is
    read here again in the trace writer, where nothing may fail on an odd one."""
    if not isinstance(items, list):
        return []
    return [item["function"] for item in items if isinstance(item, dict) and isinstance(item.get("function"), dict)]


def _tool_names(message: dict[str, Any]) -> list[str]:
    return [function.get("name", "") for function in _functions(message.get("tool_calls"))]


def _message_shape(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        return {}
    shape: dict[str, Any] = {"role": message.get("role"), "chars": len(_text(message.get("content")))}
    if tools := _tool_names(message):
        shape["tool_calls"] = tools
    return shape


def request_metadata(body: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"model": body.get("model"), "stream": bool(body.get("stream")), **params(body)}
    if isinstance(body.get("messages"), list):
        meta["messages"] = [_message_shape(m) for m in body["messages"]]
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str | list):
            meta[field] = {"items": len(value) if isinstance(value, list) else 1}
    if isinstance(body.get("tools"), list):
        meta["tools"] = [function.get("name") for function in _functions(body["tools"])]
    return meta


def output_message(response: dict[str, Any] | None, stream_text: list[str] | None, finish_reason: str | None) -> dict[str, Any] | None:
    """The first choice of a chat or text completion as one assistant message."""
    if stream_text is not None:
        return {"role": "assistant", "content": "".join(stream_text), "finish_reason": finish_reason}
    choices = (response or {}).get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        return {**message, "finish_reason": choice.get("finish_reason")}
    return {"role": "assistant", "content": choice.get("text"), "finish_reason": choice.get("finish_reason")}


def input_messages(operation: str, body: dict[str, Any] | None) -> list[Any] | None:
    """The request's input as chat messages (a text completion's prompt becomes one user message)."""
    if not body:
        return None
    if isinstance(body.get("messages"), list):
        return list(body["messages"])
    prompt = body.get("prompt")
    if operation == "text_completion" and isinstance(prompt, str | list):
        return [{"role": "user", "content": prompt if isinstance(prompt, str) else "\n".join(map(str, prompt))}]
    return None


def semconv_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI chat messages in the GenAI semantic conventions' shape (role + parts)."""
    out = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        parts: list[dict[str, Any]] = []
        text = _text(message.get("content"))
        if text:
            parts.append({"type": "text", "content": text})
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                fn = call["function"]
                parts.append({"type": "tool_call", "id": call.get("id"), "name": fn.get("name"), "arguments": fn.get("arguments")})
        if message.get("role") == "tool":
            parts = [{"type": "tool_call_response", "id": message.get("tool_call_id"), "response": text}]
        item: dict[str, Any] = {"role": message.get("role"), "parts": parts}
        if "finish_reason" in message:
            item["finish_reason"] = message["finish_reason"]
        out.append(item)
    return out
