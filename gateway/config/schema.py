"""The config file's shape (SPEC section 2), as strict frozen models.

Unknown keys are rejected (`extra="forbid"`) so a typo is an error with its dotted path, never a
silently ignored setting. Cross-references (a target's provider, a fallback's model) and secret
references are checked afterwards in `load.py`, where the whole file is in view.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gateway import stores

MiB = 1024 * 1024


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSection(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    max_body_bytes: int = Field(10 * MiB, ge=1024)
    header_timeout_s: float = Field(10.0, gt=0)
    drain_timeout_s: float = Field(30.0, ge=0)
    upstream_max_connections: int = Field(1024, ge=1)
    max_in_flight: int = Field(2048, ge=1)  # per process; beyond it, 503 with Retry-After at once
    sse_keepalive_s: float = Field(15.0, gt=0)  # SSE comment sent downstream when a stream is silent this long
    body_timeout_s: float = Field(30.0, gt=0)  # the whole body must arrive within this after the headers; else 408
    stream_stall_timeout_s: float = Field(30.0, gt=0)  # a client that accepts no data this long is cut off (client_stalled)


class StateSection(Strict):
    # each store's URL scheme picks its backend from gateway/stores/__init__.py's table
    cache: str = "memory"  # see gateway/cache/store.py
    limits: str = "memory"  # see gateway/limits/store.py
    limits_timeout_ms: int = Field(100, ge=1)  # per Redis call, behind a circuit breaker
    prompts: str | None = None  # pushed versions and label moves; unset: follows `limits` (see gateway/prompts/store.py)
    rate_limits_on_outage: Literal["open", "closed"] = "open"  # limits backend down: admit unchecked, or 503
    budgets_on_outage: Literal["open", "closed"] = "closed"
    traces: str = Field("sqlite:///.gateway/traces.db", pattern=r"^sqlite:///.+")  # see gateway/traces/store.py
    trace_queue_size: int = Field(20_000, ge=1)  # records waiting for the store (and spans for OTLP) before the oldest drop
    trace_retention_days: float = Field(30.0, gt=0)
    trace_max_rows: int = Field(1_000_000, ge=1)

    @field_validator("cache", "limits", "prompts")
    @classmethod
    def _known_backend(cls, url: str | None, info: ValidationInfo) -> str | None:
        return url if url is None else stores.check(str(info.field_name), url)


class TelemetrySection(Strict):
    otlp_endpoint: str = Field("", pattern=r"^(https?://.+)?$")
    service_name: str = "llm-gateway"
    capture_content: Literal["none", "metadata", "full"] = "full"
    max_captured_bytes: int = Field(65536, ge=256)  # per captured body; longer ones are truncated with a marker


class Price(Strict):
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    cached_input_per_million: float | None = Field(None, ge=0)
    cache_write_per_million: float | None = Field(None, ge=0)  # Anthropic's prompt-cache writes
    # the most output tokens one answer may hold: what a budget reserves when a request sets no cap
    max_output_tokens: int | None = Field(None, ge=1)


ProviderKind = Literal["openai", "anthropic", "gemini", "mock"]


class ProviderSection(Strict):
    kind: ProviderKind
    base_url: str | None = None
    api_key: str | None = None  # a reference: "env:NAME" or "file:PATH"
    headers: dict[str, str] = {}
    connect_timeout_s: float = Field(5.0, gt=0)
    first_byte_timeout_s: float = Field(60.0, gt=0)  # until the response headers arrive
    idle_timeout_s: float = Field(120.0, gt=0)  # the longest silence inside a response body or stream
    # kind = "openai" with azure = true: Azure OpenAI deployment paths, `api-version`, `api-key` header
    azure: bool = False
    api_version: str | None = None
    anthropic_version: str = "2023-06-01"  # kind = "anthropic": the anthropic-version header
    # kind = "mock": shape of the deterministic stream
    chunks: int = Field(8, ge=1, le=10_000)
    chunk_delay_ms: float = Field(0.0, ge=0)
    delay_ms: float = Field(0.0, ge=0)


class TargetSection(Strict):
    provider: str
    model: str
    weight: float = Field(1.0, gt=0)
    price: Price | None = None
    adapter: str | None = None


class RuleSection(Strict):
    """Route to `model` when every condition given here holds (absent conditions always hold)."""

    name: str
    model: str
    max_prompt_tokens: int | None = Field(None, ge=0)  # estimated: characters / 4
    min_prompt_tokens: int | None = Field(None, ge=0)
    tools: bool | None = None  # the request carries tools (true) or none (false)
    images: bool | None = None  # some message has an image part (true) or none (false)
    route_tag: str | None = None  # the request header x-gateway-route-tag equals this


class BatchSection(Strict):
    window_ms: float = Field(0.0, ge=0, le=1000)  # how long a request waits for company when none of its batch group is in flight
    max_inputs: int = Field(256, ge=1, le=2048)  # 1 = no batching
    max_tokens: int = Field(100_000, ge=1)  # approximate (4 characters a token)


class ModelSection(Strict):
    targets: list[TargetSection] = Field(min_length=1)
    fallbacks: list[str] = []
    strategy: Literal["weighted", "least_outstanding", "latency"] = "weighted"
    sticky: bool = False  # keep each `user` on the same target (consistent A/B splits)
    retries: int = Field(2, ge=0, le=10)  # further attempts within this model, before its fallbacks
    first_byte_timeout_s: float | None = Field(None, gt=0)  # overrides the providers' value
    deadline_s: float = Field(600.0, gt=0)  # total time a request for this model may take
    eject_after: int = Field(5, ge=1)  # consecutive failures before a target is ejected
    ejection_s: float = Field(30.0, gt=0)  # times the target's ejection count
    rules: list[RuleSection] = []  # ordered; the first that matches picks the model
    cache: Literal["off", "deterministic", "all"] = "off"
    cache_ttl_s: int = Field(3600, ge=1)
    cache_scope: Literal["team", "shared"] = "team"  # "shared": one cache entry serves every team
    batch: BatchSection = BatchSection()  # embeddings micro-batching
    price: Price | None = None


class DirSection(Strict):
    dir: str


class PoliciesSection(Strict):
    dir: str = "policies"
    # true: a request without a key (or with one no policy file lists) is admitted as the keyless
    # "open" principal. Off, a gateway with no key at all refuses to start and a reload that would
    # leave none is rejected: losing the policy files must never open the gateway.
    open: bool = False


class ConfigFile(Strict):
    server: ServerSection = ServerSection()
    state: StateSection = StateSection()
    telemetry: TelemetrySection = TelemetrySection()
    providers: dict[str, ProviderSection] = {}
    models: dict[str, ModelSection] = {}
    policies: PoliciesSection = PoliciesSection()
    prompts: DirSection = DirSection(dir="prompts")
