"""Models clients may name, each resolved at load into ready-to-call deployments.

Everything per-target that does not depend on the request (URL, headers with the provider key,
timeouts, wire format, transport) is computed here once, so the hot path only picks a deployment.
Wire formats and transports are chosen from a small kind -> factory table.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.config import Config, ConfigError, Problem
from gateway.config.problems import dotted
from gateway.config.schema import ProviderSection
from gateway.providers.base import Deployment, WireFormat
from gateway.providers.mock import MockTransport
from gateway.providers.openai import OpenAIWire
from gateway.upstream import HttpTransport, Pool, Transport

WIRE_FORMATS: dict[str, Callable[[], WireFormat]] = {"openai": OpenAIWire, "mock": OpenAIWire}


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    deployments: tuple[Deployment, ...]
    fallbacks: tuple[str, ...]
    _cumulative: tuple[float, ...]

    def pick(self) -> Deployment:
        """Weighted random choice among the model's deployments."""
        if len(self.deployments) == 1:
            return self.deployments[0]
        point = random.random() * self._cumulative[-1]
        return self.deployments[bisect.bisect_right(self._cumulative, point)]


@dataclass(frozen=True, slots=True)
class Catalog:
    models: dict[str, ModelRoute]


def _transport(name: str, provider: ProviderSection, pool: Pool) -> Transport:
    if provider.kind == "mock":
        return MockTransport(provider.chunks, provider.chunk_delay_ms, provider.delay_ms)
    assert provider.base_url is not None
    parts = urlsplit(provider.base_url)
    address = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    return HttpTransport(pool, name, address, provider.connect_timeout_s, provider.read_timeout_s)


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
    wires = {name: WIRE_FORMATS[p.kind]() for name, p in file.providers.items()}
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
                    base_url=(provider.base_url or "mock://").rstrip("/"),
                    headers=headers[target.provider],
                    label=f"{target.provider}/{upstream_model}",
                )
            )
        cumulative, total = [], 0.0
        for d in deployments:
            total += d.weight
            cumulative.append(total)
        models[model] = ModelRoute(model, tuple(deployments), tuple(section.fallbacks), tuple(cumulative))
    return Catalog(models)
