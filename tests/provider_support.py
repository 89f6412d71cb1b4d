"""One fake provider and a gateway in front of it for a whole test module: the fixtures the
Anthropic, Gemini and Azure tests share.

    CLAUDE = Provider("claude", "anthropic", KEY, MODELS)
    server, gateway, claude, client = provider_fixtures(FakeAnthropic, CLAUDE)

pytest knows a fixture by the module name it is bound to, so bind all four, `server` and `gateway`
under those names (the others ask for them by name); the third resets the fake before each test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
import pytest

from tests.builders import table
from tests.conftest import GatewayProcess, start_gateway
from tests.fakes.openai_upstream import FakeOpenAI

F = TypeVar("F", bound=FakeOpenAI)


@dataclass(frozen=True)
class Provider:
    """`[providers.<name>]` of `kind`, its API key read from the environment, and `models`: the
    `[models.*]` tables that use it."""

    name: str
    kind: str
    key: str
    models: str
    settings: Mapping[str, object] = field(default_factory=dict)  # more of the provider's keys: azure = true

    @property
    def key_variable(self) -> str:
        return f"{self.name.upper()}_TEST_KEY"

    def config(self, base_url: str) -> str:
        provider = {"kind": self.kind, **self.settings, "base_url": base_url, "api_key": f"env:{self.key_variable}"}
        return f"""
[policies]
open = true  # keyless clients: these tests are about the provider, not keys

[state]
traces = "sqlite:///traces.db"

{table(f"[providers.{self.name}]", provider)}
{self.models}"""


def provider_fixtures(fake: Callable[[], F], provider: Provider, root: Callable[[F], str] = lambda f: f.base_url) -> tuple[Any, ...]:
    """The fixtures `server` (the fake, per module), `gateway` (configured for `provider`, with
    `root(server)` as its base URL), the fake reset before each test, and `client` (an `openai`
    SDK client of the gateway)."""

    @pytest.fixture(scope="module")
    def server() -> Iterator[F]:
        with fake() as running:
            yield running

    @pytest.fixture(scope="module")
    def gateway(tmp_path_factory: pytest.TempPathFactory, server: F) -> Iterator[GatewayProcess]:
        config = provider.config(root(server))
        gw = start_gateway(tmp_path_factory.mktemp(provider.name), config, policies={}, env={provider.key_variable: provider.key})
        yield gw
        gw.stop()

    @pytest.fixture
    def reset(server: F) -> F:
        server.reset()
        return server

    @pytest.fixture
    def client(gateway: GatewayProcess) -> openai.OpenAI:
        return openai.OpenAI(base_url=gateway.base_url, api_key="sk-client", max_retries=0, timeout=20)

    return server, gateway, reset, client
