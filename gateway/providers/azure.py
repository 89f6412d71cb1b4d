"""Azure OpenAI: kind `openai` with `azure = true` (and optionally `api_version`).

Azure speaks OpenAI's wire format under deployment paths:
`{base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}`, where
`base_url` is the resource endpoint (`https://{resource}.openai.azure.com`), a target's `model` is
the deployment name, and the key travels in an `api-key` header. `api_version` defaults to the
latest GA version this module was tested against.

Answers are relayed as OpenAI's, except one chunk: Azure opens a stream with a chunk holding only
`prompt_filter_results` and no choices, which clients index as `choices[0]` and fail on, so the
stream's leading chunks without choices or usage are dropped.
"""

from __future__ import annotations

from typing import Any

from gateway.providers.base import Deployment, Operation
from gateway.providers.openai import PATHS, OpenAIStream, OpenAIWire, parse_object
from gateway.sse import Event
from gateway.upstream import UpstreamRequest

DEFAULT_API_VERSION = "2024-10-21"


class AzureStream(OpenAIStream):
    __slots__ = ()

    def feed(self, event: Event) -> bytes:
        if self.state.response_id is None and event.data != b"[DONE]" and event.event is None:
            chunk = parse_object(event.data)
            if not chunk.get("choices") and not chunk.get("usage") and "error" not in chunk:
                return b""
        return super().feed(event)


class AzureWire(OpenAIWire):
    def __init__(self, api_version: str | None = None) -> None:
        self.api_version = api_version or DEFAULT_API_VERSION

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"api-key": key}

    def request(self, op: Operation, body: dict[str, Any], deployment: Deployment) -> UpstreamRequest:
        openai = super().request(op, body, deployment)
        url = f"{deployment.base_url}/openai/deployments/{deployment.model}{PATHS[op]}?api-version={self.api_version}"
        return UpstreamRequest(url, openai.headers, openai.body)

    def stream(self, op: Operation, include_usage: bool) -> AzureStream:
        return AzureStream(include_usage)
