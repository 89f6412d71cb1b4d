"""A finished request's record (as the worker sent it) -> one row of the trace store."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.traces import capture

CONTENT = ("request_body", "request_json", "response_json", "response_text")


def without_content(entry: dict[str, Any]) -> dict[str, Any]:
    """The record without its bodies: what is kept of one whose content cannot be captured (its
    `capture` mode stays, with nothing captured: the row says the capture failed)."""
    return {key: value for key, value in entry.items() if key not in CONTENT}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _content(entry: dict[str, Any], max_bytes: int) -> tuple[str | None, str | None]:
    mode = entry.get("capture", "none")
    body = entry.get("request_body")
    if mode == "full":
        # the request's text as sent, else its (changed) body; the response's text, else the output
        # message of a stream
        request_text, response_text = entry.get("request_json"), entry.get("response_json")
        request: str | None
        if request_text is not None:
            request = capture.clip(request_text, max_bytes)
        else:
            request = capture.to_json(body, max_bytes) if body is not None else None
        if response_text is not None:
            return request, capture.clip(response_text, max_bytes)
        output = capture.output_message(None, entry.get("response_text"), entry.get("finish_reason"))
        return request, (capture.to_json(output, max_bytes) if output is not None else None)
    if mode == "metadata" and body is not None:
        return capture.to_json(capture.request_metadata(body), max_bytes), None
    return None, None


def row(entry: dict[str, Any], max_bytes: int) -> tuple[Any, ...]:
    usage = entry.get("usage") or {}
    request, response = _content(entry, max_bytes)
    attempts = entry.get("attempts") or []
    return (
        entry["request_id"],
        entry["trace_id"],
        entry["span_id"],
        entry.get("parent_span_id"),
        entry["started_at"],
        _ms(entry["duration_s"]),
        _ms(entry.get("ttft_s")),
        _ms(entry.get("upstream_s")),
        _ms(entry.get("overhead_s")),
        entry["operation"],
        int(bool(entry.get("stream"))),
        entry.get("key_name"),
        entry.get("team"),
        entry.get("model"),
        entry.get("target"),
        entry.get("response_model"),
        entry.get("response_id"),
        entry.get("route_rule"),
        entry.get("prompt_id"),
        entry.get("prompt_version"),
        entry.get("prompt_label"),
        entry.get("prompt_hash"),
        entry.get("policy_version"),
        entry.get("cache") or "bypass",
        entry["status"],
        entry.get("error_type"),
        entry.get("finish_reason"),
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        usage.get("cached_tokens"),
        int(bool(usage.get("estimated"))) if usage else None,
        entry.get("cost_usd"),
        int(bool(entry.get("priced"))),
        orjson.dumps(
            [
                {
                    "target": a.get("target"),
                    "model": a.get("model"),
                    "status": a.get("status"),
                    "error_type": a.get("error_type"),
                    "latency_ms": _ms(a.get("latency_s")),
                    "started_ms": _ms(a.get("started_s")),
                    "server_address": a.get("server_address"),
                }
                for a in attempts
            ]
        ).decode(),
        orjson.dumps(capture.params(entry.get("request_body"))).decode(),
        entry.get("capture", "none"),
        request,
        response,
    )
