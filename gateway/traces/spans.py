"""A finished request's record as OpenTelemetry spans, following the GenAI semantic conventions.

One SERVER span for the gateway's handling of the request, and under it one CLIENT span per
upstream attempt, named `{gen_ai.operation.name} {gen_ai.request.model}`. The `gen_ai.*` names are
the OpenTelemetry ones; `gateway.*` carries this gateway's own decisions (cache, prompt, policy,
routing). Content goes in `gen_ai.input.messages` / `gen_ai.output.messages` only when the
request's capture mode is `full`, redacted and truncated like the stored trace.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.traces import capture
from gateway.traces.context import child_span_id
from gateway.traces.otlp import CLIENT, SERVER, Span, Value

# gen_ai.provider.name values of the semantic conventions, by provider kind
PROVIDER_NAMES = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic", "gemini": "gcp.gemini", "mock": "mock"}
ROUTES = {"chat": "/v1/chat/completions", "text_completion": "/v1/completions", "embeddings": "/v1/embeddings"}
REQUEST_PARAMS = {
    "temperature": "gen_ai.request.temperature",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
    "stop": "gen_ai.request.stop_sequences",
}


def _param_attributes(params: dict[str, Any]) -> dict[str, Value | None]:
    out: dict[str, Value | None] = {}
    for key, value in params.items():
        name = REQUEST_PARAMS.get(key)
        if name is None:
            continue
        if key == "stop":
            out[name] = [value] if isinstance(value, str) else [str(v) for v in value] if isinstance(value, list) else None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


def _usage(entry: dict[str, Any]) -> dict[str, Value | None]:
    usage = entry.get("usage")
    if not usage:
        return {}
    return {
        "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
        "gen_ai.usage.cache_read.input_tokens": usage.get("cached_tokens") or None,
    }


def _attempts(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's attempts; one synthesized from the served target when routing recorded none."""
    attempts: list[dict[str, Any]] = entry.get("attempts") or []
    if attempts or not entry.get("target"):
        return attempts
    status = entry["status"] if entry.get("error_type") not in ("client_disconnected",) else 200
    return [
        {
            "target": entry["target"],
            "model": entry.get("model"),
            "started_s": 0.0,
            "latency_s": entry["duration_s"] if entry.get("stream") else entry.get("upstream_s") or 0.0,
            "status": status,
            "error_type": entry.get("error_type") if status >= 400 else None,
            "server_address": None,
        }
    ]


def count(entry_attempts: int, target: str | None) -> int:
    """How many spans a record makes: its SERVER span and one per attempt (or one for the target)."""
    return 1 + (entry_attempts or (1 if target else 0))


def build(entry: dict[str, Any], providers: dict[str, tuple[str, str]], max_bytes: int) -> list[Span]:
    """`providers` maps a provider's config name to (kind, host:port of its base URL)."""
    op = entry["operation"]
    start_ns = int(entry["started_at"] * 1e9)
    end_ns = start_ns + int(entry["duration_s"] * 1e9)
    body = entry.get("request_body")
    params = _param_attributes(capture.params(body))
    status = entry["status"]
    server: dict[str, Value | None] = {
        "gen_ai.operation.name": op,
        "gen_ai.request.model": entry.get("model"),
        **params,
        "gen_ai.response.model": entry.get("response_model"),
        "gen_ai.response.id": entry.get("response_id"),
        "gen_ai.response.finish_reasons": [entry["finish_reason"]] if entry.get("finish_reason") else None,
        **_usage(entry),
        "http.request.method": "POST",
        "http.route": ROUTES.get(op),
        "http.response.status_code": status,
        "error.type": entry.get("error_type") if status >= 400 else None,
        "gateway.request_id": entry["request_id"],
        "gateway.team": entry.get("team"),
        "gateway.key_name": entry.get("key_name"),
        "gateway.cache.result": entry.get("cache"),
        "gateway.policy.version": entry.get("policy_version"),
        "gateway.prompt.id": entry.get("prompt_id"),
        "gateway.prompt.version": entry.get("prompt_version"),
        "gateway.prompt.label": entry.get("prompt_label"),
        "gateway.prompt.hash": entry.get("prompt_hash"),
        "gateway.route.target": entry.get("target"),
        "gateway.route.rule": entry.get("route_rule"),
        "gateway.cost_usd": float(entry["cost_usd"]) if entry.get("cost_usd") is not None else None,
        "gateway.time_to_first_token_s": entry.get("ttft_s"),
        "gateway.stream": bool(entry.get("stream")),
    }
    name = f"{op} {entry['model']}" if entry.get("model") else op
    spans = [Span(entry["trace_id"], entry["span_id"], entry.get("parent_span_id"), name, SERVER, start_ns, end_ns, server)]
    if status >= 500:
        spans[0].error = entry.get("error_type") or "error"
    attempts = _attempts(entry)
    for i, attempt in enumerate(attempts):
        spans.append(_client(entry, i, attempt, i == len(attempts) - 1, providers, params, max_bytes))
    return spans


def _client(
    entry: dict[str, Any],
    i: int,
    attempt: dict[str, Any],
    last: bool,
    providers: dict[str, tuple[str, str]],
    params: dict[str, Value | None],
    max_bytes: int,
) -> Span:
    provider, _, upstream_model = attempt["target"].partition("/")
    kind, address = providers.get(provider, (provider, ""))
    host, _, port = (attempt.get("server_address") or address).rpartition(":")
    start_ns = int((entry["started_at"] + (attempt.get("started_s") or 0.0)) * 1e9)
    end_ns = start_ns + int((attempt.get("latency_s") or 0.0) * 1e9)
    op = entry["operation"]
    failed = attempt.get("error_type") is not None or (attempt.get("status") or 0) >= 400
    attrs: dict[str, Value | None] = {
        "gen_ai.operation.name": op,
        "gen_ai.provider.name": PROVIDER_NAMES.get(kind, kind),
        "gen_ai.request.model": upstream_model,
        **params,
        "server.address": host or None,
        "server.port": int(port) if port.isdigit() else None,
        "error.type": (attempt.get("error_type") or str(attempt.get("status"))) if failed else None,
        "gateway.attempt": i + 1,
        "gateway.route.target": attempt["target"],
        "gateway.route.model": attempt.get("model"),
        "gateway.team": entry.get("team"),
    }
    if last and not failed:  # the attempt that served the request
        attrs.update(
            {
                "gen_ai.response.model": entry.get("response_model"),
                "gen_ai.response.id": entry.get("response_id"),
                "gen_ai.response.finish_reasons": [entry["finish_reason"]] if entry.get("finish_reason") else None,
                **_usage(entry),
            }
        )
        if entry.get("capture") == "full":
            attrs.update(_content(entry, max_bytes))
    span = Span(entry["trace_id"], child_span_id(entry["span_id"], i), entry["span_id"], f"{op} {upstream_model}", CLIENT, start_ns, end_ns)
    span.attributes = attrs
    if failed:
        span.error = attrs["error.type"]  # type: ignore[assignment]
    return span


def _content(entry: dict[str, Any], max_bytes: int) -> dict[str, Value | None]:
    request, response = entry.get("request_json"), entry.get("response_json")
    body = _parsed(request) if request is not None else entry.get("request_body")
    messages = capture.input_messages(entry["operation"], body)
    output = capture.output_message(
        _parsed(response) if response is not None else None, entry.get("response_text"), entry.get("finish_reason")
    )
    return {
        "gen_ai.input.messages": capture.to_json(capture.semconv_messages(messages), max_bytes) if messages else None,
        "gen_ai.output.messages": capture.to_json(capture.semconv_messages([output]), max_bytes) if output else None,
    }


def _parsed(text: str) -> dict[str, Any] | None:
    """A body the record carries as JSON text (it was valid JSON when the gateway read or sent it)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
