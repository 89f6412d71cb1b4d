"""The config file's shape (SPEC section 2), as strict frozen models.

Unknown keys are rejected (`extra="forbid"`) so a typo is an error with its dotted path, never a
silently ignored setting. Cross-references (a target's provider, a fallback's model) and secret
references are checked afterwards in `load.py`, where the whole file is in view.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


class StateSection(Strict):
    cache: str = "memory"
    limits: str = "memory"
    traces: str = "sqlite:///.gateway/traces.db"


class TelemetrySection(Strict):
    otlp_endpoint: str = ""
    service_name: str = "llm-gateway"
    capture_content: Literal["none", "metadata", "full"] = "full"


class Price(Strict):
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    cached_input_per_million: float | None = Field(None, ge=0)


ProviderKind = Literal["openai", "anthropic", "gemini", "mock"]


class ProviderSection(Strict):
    kind: ProviderKind
    base_url: str | None = None
    api_key: str | None = None  # a reference: "env:NAME" or "file:PATH"
    headers: dict[str, str] = {}
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)  # first byte, and any gap while reading a body
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


class ModelSection(Strict):
    targets: list[TargetSection] = Field(min_length=1)
    fallbacks: list[str] = []
    cache: Literal["off", "deterministic", "all"] = "off"
    cache_ttl_s: int = Field(3600, ge=1)
    price: Price | None = None


class DirSection(Strict):
    dir: str


class ConfigFile(Strict):
    server: ServerSection = ServerSection()
    state: StateSection = StateSection()
    telemetry: TelemetrySection = TelemetrySection()
    providers: dict[str, ProviderSection] = {}
    models: dict[str, ModelSection] = {}
    policies: DirSection = DirSection(dir="policies")
    prompts: DirSection = DirSection(dir="prompts")
