"""What a provider module is: pure transforms between OpenAI's wire format and a provider's.

A `WireFormat` builds the upstream request from the client's (already parsed) body, turns the
provider's answer into OpenAI's, translates a stream event by event, and maps the provider's error
bodies. It never touches a socket: the dispatcher sends what it builds through a `Transport`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from gateway.config.schema import Price
from gateway.sse import Event
from gateway.upstream import Transport, UpstreamRequest


class Operation(StrEnum):
    """Values of the OpenTelemetry attribute gen_ai.operation.name."""

    CHAT = "chat"
    COMPLETION = "text_completion"
    EMBEDDINGS = "embeddings"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens read from the provider's cache (part of prompt_tokens)
    cache_write_tokens: int = 0  # prompt tokens written to it, billed apart (Anthropic; part of prompt_tokens)
    estimated: bool = False

    def as_openai(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens or self.cache_write_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.cache_write_tokens:
            usage["prompt_tokens_details"]["cache_creation_tokens"] = self.cache_write_tokens
        return usage


def usage_from_openai(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(cached or 0),
    )


@dataclass(slots=True)
class Reply:
    """A complete answer, in OpenAI's format, ready for the client."""

    data: dict[str, Any]
    raw: bytes | None  # the provider's bytes when they can be relayed as they are
    usage: Usage | None
    finish_reason: str | None = None


KEEP_TEXT = 256 * 1024


@dataclass(slots=True)
class StreamState:
    """What a stream translation has learned so far (for usage, traces and estimates)."""

    include_usage: bool  # the client asked for usage in its stream
    usage: Usage | None = None
    finish_reason: str | None = None
    done: bool = False  # the provider ended the stream properly
    response_id: str | None = None
    response_model: str | None = None
    text: list[str] = field(default_factory=list)  # completion text, for estimates and traces: the first KEEP_TEXT chars
    kept_chars: int = 0
    dropped_chars: int = 0  # text beyond KEEP_TEXT, only counted, so a stream's memory stays bounded
    cost: Callable[[Usage], float] | None = None  # the deployment's price, when it has one

    def usage_json(self, usage: Usage) -> dict[str, Any]:
        """Usage as a stream's usage chunk carries it: with `cost_usd` when the deployment is priced."""
        out = usage.as_openai()
        if self.cost is not None:
            out["cost_usd"] = self.cost(usage)
        return out

    def add_text(self, text: str) -> None:
        if self.kept_chars < KEEP_TEXT:
            self.text.append(text)
            self.kept_chars += len(text)
        else:
            self.dropped_chars += len(text)


class StreamTranslator(Protocol):
    state: StreamState

    def feed(self, event: Event) -> bytes:
        """The OpenAI SSE bytes to send for one provider event (may be empty)."""
        ...


@dataclass(frozen=True, slots=True)
class Deployment:
    """One target of a model, resolved at load: everything needed to call it."""

    provider: str
    model: str  # the upstream model name (or the adapter name, for LoRA adapters)
    weight: float
    wire: WireFormat
    transport: Transport
    base_url: str
    headers: dict[str, str]
    label: str = ""  # "provider/model", the x-gateway-target value
    first_byte_s: float = 60.0  # the model's override, else the provider's
    price: Price | None = None  # resolved at load (gateway/pricing.py); None = unpriced

    @property
    def kind(self) -> str:
        return self.wire.kind


class WireFormat(Protocol):
    kind: str

    def auth_headers(self, key: str) -> dict[str, str]: ...

    def request(self, op: Operation, body: dict[str, Any], deployment: Deployment) -> UpstreamRequest: ...
    def reply(self, op: Operation, raw: bytes) -> Reply: ...
    def stream(self, op: Operation, include_usage: bool) -> StreamTranslator: ...
    def error_message(self, raw: bytes) -> str | None: ...
    def retry_after(self, raw: bytes) -> str | None: ...  # from an error body, for providers that put it there
