"""Configs and policies shared by the cache, coalescing, batching and Redis tests."""

from __future__ import annotations

import openai

from tests.builders import KEYS, api_key, fake_provider, policy, team
from tests.conftest import GatewayProcess

POLICY = policy(
    {"alpha": team("*"), "beta": team("*"), "gamma": team("*", cache=False)},
    [
        api_key("alpha-app", "alpha", KEYS["alpha"]),
        api_key("beta-app", "beta", KEYS["beta"]),
        api_key("gamma-app", "gamma", KEYS["admin"], admin=True),  # also reads traces (tests.traceutil)
    ],
)

PRICE = "price = { input_per_million = 1.0, output_per_million = 2.0 }"


def config(upstream_url: str, state_cache: str = "memory", models: str = "") -> str:
    """One fake provider; models `cached` (cache = all), `shared` (cache_scope = shared),
    `determ` (cache = deterministic), `plain` (no cache), `emb` (embeddings batching), plus `models`."""
    return f"""
[server]
host = "127.0.0.1"

[state]
cache = "{state_cache}"
traces = "sqlite:///traces.db"

{fake_provider(upstream_url, timeout_s=5)}
[models.cached]
targets = [{{ provider = "fake", model = "up-cached" }}]
cache = "all"
retries = 0
{PRICE}

[models.shared]
targets = [{{ provider = "fake", model = "up-shared" }}]
cache = "all"
cache_scope = "shared"
retries = 0

[models.determ]
targets = [{{ provider = "fake", model = "up-determ" }}]
cache = "deterministic"
retries = 0

[models.plain]
targets = [{{ provider = "fake", model = "up-plain" }}]
retries = 0

[models.emb]
targets = [{{ provider = "fake", model = "text-embedding-3-small" }}]
retries = 0
batch = {{ window_ms = 50 }}

[policies]
dir = "policies"
{models}
"""


def client(gw: GatewayProcess, key: str = KEYS["alpha"]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def async_client(gw: GatewayProcess, key: str = KEYS["alpha"]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)
