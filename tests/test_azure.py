"""Azure OpenAI: kind `openai` with `azure = true` reaches deployment paths with `api-version` and an
`api-key` header; answers are relayed, minus Azure's choice-less prompt-filter chunk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from gateway.config import ConfigError
from gateway.config.load import build
from tests.fakes import openai_upstream
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.provider_support import Provider, provider_fixtures

KEY = "azure-key-0123456789abcdef0123456789"
API_VERSION = "2024-10-21"
DEPLOYMENT = "prod-gpt4o-mini"


class FakeAzure(FakeOpenAI):
    """`FakeOpenAI` behind Azure's routing: /openai/deployments/{deployment}/{operation}?api-version=..."""

    async def _respond(self, request: web.Request, parsed: Any, raw: bytes, behavior: Behavior, n: int) -> web.StreamResponse:
        deployment, _, operation = request.path.removeprefix("/openai/deployments/").partition("/")
        if not request.path.startswith("/openai/deployments/") or deployment != DEPLOYMENT:
            return self._error(n, behavior, 404, "The API deployment for this resource does not exist.", code="DeploymentNotFound")
        if request.query.get("api-version") != API_VERSION:
            return self._error(n, behavior, 400, "Unsupported or missing api-version.")
        if request.headers.get("api-key") != KEY or "authorization" in request.headers:
            return self._error(n, behavior, 401, "Access denied due to invalid subscription key.")
        if behavior.body is not None or not isinstance(parsed, dict):
            return await super()._respond(request, parsed, raw, behavior, n)
        if operation != "chat/completions":
            return self._error(n, behavior, 404, f"This fake serves chat/completions only, not {operation}.")
        parsed = {**parsed, "model": "gpt-4o-mini-2024-07-18"}  # Azure names the model behind the deployment
        return await self._chat(request, parsed, behavior, n, parsed.get("stream") is True)


MODELS = f"""
[models."gpt-4o-mini"]
targets = [{{ provider = "azure", model = "{DEPLOYMENT}", price = {{ input_per_million = 0.165, output_per_million = 0.66 }} }}]

[models."unpriced"]
targets = [{{ provider = "azure", model = "{DEPLOYMENT}" }}]
"""


AZURE = Provider("azure", "openai", KEY, MODELS, settings={"azure": True})
server, gateway, azure, client = provider_fixtures(FakeAzure, AZURE, root=lambda fake: fake.base_url.removesuffix("/v1"))


def test_chat_goes_to_the_deployment(client: openai.OpenAI, azure: FakeAzure) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello azure"}])
    answer = raw.parse()
    assert answer.choices[0].message.content == "echo: hello azure"
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 3)
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx((2 * 0.165 + 3 * 0.66) / 1e6, abs=1e-12)
    sent = azure.requests[0]
    assert sent.path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
    assert sent.query == {"api-version": API_VERSION}
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers


def test_deployment_names_are_unpriced_unless_configured(client: openai.OpenAI, azure: FakeAzure) -> None:
    raw = client.chat.completions.with_raw_response.create(model="unpriced", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "echo: hi"
    assert "x-gateway-cost-usd" not in raw.headers


def test_stream_drops_the_prompt_filter_chunk(client: openai.OpenAI, azure: FakeAzure) -> None:
    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    head = {"created": 1, "id": "chatcmpl-az", "model": "gpt-4o-mini", "object": "chat.completion.chunk"}
    filters = {"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}}}
    body = b"".join(
        [
            event({"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": [filters]}),
            event({"choices": [{"delta": {"content": "", "role": "assistant"}, "finish_reason": None, "index": 0}], **head}),
            event({"choices": [{"delta": {"content": "Hi there"}, "finish_reason": None, "index": 0}], **head}),
            event({"choices": [{"delta": {}, "finish_reason": "stop", "index": 0}], **head}),
            event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, **head}),
            openai_upstream.DONE_EVENT,
        ]
    )
    azure.script(Behavior(body=body, headers={"content-type": "text/event-stream"}))
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert [c.choices[0].delta.content for c in chunks] == ["", "Hi there", None]  # every chunk has a choice to index
    assert {c.id for c in chunks} == {"chatcmpl-az"}
    assert azure.requests[0].json["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("provider", "path"),
    [
        ({"kind": "openai", "base_url": "http://127.0.0.1:1", "api_version": "2024-10-21"}, "providers.p.api_version"),
        ({"kind": "anthropic", "azure": True, "api_key": "env:HOME"}, "providers.p.azure"),
    ],
)
def test_azure_options_are_checked(provider: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        build({"providers": {"p": provider}}, "config.toml", Path.cwd())
    assert [p.path for p in info.value.problems] == [path]
