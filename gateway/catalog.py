"""Models clients may name, each resolved at load into ready-to-call deployments.

Everything per-target that does not depend on the request (URL, headers with the provider key,
timeouts, wire format, transport) is computed here once, so the hot path only picks a deployment.
Wire formats and transports are chosen from a small kind -> factory table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from gateway.config import Config, ConfigError, Problem
from gateway.config.problems import dotted
from gateway.config.schema import ProviderSection, RuleSection
from gateway.pricing import load_table, resolve
from gateway.providers import anthropic, gemini
from gateway.providers.azure import AzureWire
from gateway.providers.base import Deployment, WireFormat
from gateway.providers.mock import MockTransport
from gateway.providers.openai import OpenAIWire
from gateway.routing import Balancer
from gateway.upstream import HttpTransport, Pool, Transport

WIRE_FORMATS: dict[str, Callable[[ProviderSection], WireFormat]] = {
    "openai": lambda p: AzureWire(p.api_version) if p.azure else OpenAIWire(),
    "anthropic": lambda p: anthropic.AnthropicWire(p.anthropic_version),
    "gemini": lambda p: gemini.GeminiWire(),
    "mock": lambda p: OpenAIWire(),
}
DEFAULT_BASE_URLS = {"anthropic": anthropic.DEFAULT_BASE_URL, "gemini": gemini.DEFAULT_BASE_URL, "mock": "mock://"}


def base_url(provider: ProviderSection) -> str:
    return (provider.base_url or DEFAULT_BASE_URLS[provider.kind]).rstrip("/")


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A model clients may name: its deployments, their balancer, and what to do when they fail."""

    name: str
    deployments: tuple[Deployment, ...]
    fallbacks: tuple[str, ...]
    balancer: Balancer
    retries: int
    deadline_s: float
    rules: tuple[RuleSection, ...] = ()
    reaches: frozenset[str] = frozenset()  # every other model its rules and fallbacks may hand a request to
    _views: dict[frozenset[str], ModelRoute] = field(default_factory=dict, init=False, repr=False, compare=False)

    def within(self, allowed: frozenset[str]) -> ModelRoute:
        """The route as a team that may use only `allowed` sees it: rules and fallbacks that lead
        elsewhere are gone, so nothing downstream (rules, attempts, reservations) can reach them.
        The same object when nothing is cut (the common case: a set check); views share the
        balancer and are kept per kept subset, so their number is bounded by the config, not by
        how many policy sets come and go."""
        if self.reaches <= allowed:
            return self
        kept = self.reaches & allowed
        view = self._views.get(kept)
        if view is None:
            rules = tuple(r for r in self.rules if r.model in kept)
            fallbacks = tuple(f for f in self.fallbacks if f in kept)
            view = self._views[kept] = replace(self, rules=rules, fallbacks=fallbacks, reaches=kept)
        return view


@dataclass(frozen=True, slots=True)
class Catalog:
    models: dict[str, ModelRoute]


def _transport(name: str, provider: ProviderSection, pool: Pool) -> Transport:
    if provider.kind == "mock":
        return MockTransport(provider.chunks, provider.chunk_delay_ms, provider.delay_ms)
    parts = urlsplit(base_url(provider))
    address = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    return HttpTransport(pool, name, address, provider.connect_timeout_s, provider.idle_timeout_s)


def _headers(config: Config, name: str, provider: ProviderSection, wire: WireFormat) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    secret = config.secrets.get(name)
    if secret is not None:
        headers |= wire.auth_headers(secret.reveal())
    return headers | {k.lower(): v for k, v in provider.headers.items()}


def build_catalog(config: Config, pool: Pool) -> Catalog:
    file = config.file
    problems = [
        Problem(config.source, dotted("providers", name, "kind"), f"kind {p.kind!r} is not supported by this version")
        for name, p in file.providers.items()
        if p.kind not in WIRE_FORMATS
    ]
    if problems:
        raise ConfigError(problems)
    transports = {name: _transport(name, p, pool) for name, p in file.providers.items()}
    wires = {name: WIRE_FORMATS[p.kind](p) for name, p in file.providers.items()}
    prices = load_table()
    headers = {name: _headers(config, name, p, wires[name]) for name, p in file.providers.items()}
    models = {}
    for model, section in file.models.items():
        deployments = []
        for target in section.targets:
            provider = file.providers[target.provider]
            upstream_model = target.adapter or target.model
            deployments.append(
                Deployment(
                    provider=target.provider,
                    model=upstream_model,
                    weight=target.weight,
                    wire=wires[target.provider],
                    transport=transports[target.provider],
                    base_url=base_url(provider),
                    headers=headers[target.provider],
                    label=f"{target.provider}/{upstream_model}",
                    price=resolve(target.price, section.price, prices, target.model),
                    first_byte_s=section.first_byte_timeout_s or provider.first_byte_timeout_s,
                )
            )
        balancer = Balancer([d.weight for d in deployments], section.strategy, section.sticky, section.eject_after, section.ejection_s)
        reaches = frozenset(section.fallbacks) | {rule.model for rule in section.rules}
        models[model] = ModelRoute(
            model,
            tuple(deployments),
            tuple(section.fallbacks),
            balancer,
            section.retries,
            section.deadline_s,
            tuple(section.rules),
            reaches,
        )
    return Catalog(models)
