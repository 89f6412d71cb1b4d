"""Helpers shared by the trace, metrics and OpenTelemetry tests."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import openai

from tests.conftest import KEYS, GatewayProcess, config_for

T = TypeVar("T")


def traces_config(upstream_url: str, state: str = "", telemetry: str = "", extra: str = "") -> str:
    return config_for(upstream_url, extra=extra, state=state) + ("\n[telemetry]\n" + telemetry if telemetry else "")


def client(gw: GatewayProcess, key: str = KEYS["alpha"]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)


def wait_for(check: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value {value!r}")
        time.sleep(0.1)


def admin_get(gw: GatewayProcess, path: str, **params: Any) -> httpx.Response:
    return httpx.get(gw.url + path, params=params, headers={"authorization": f"Bearer {KEYS['admin']}"}, timeout=10)


def trace(gw: GatewayProcess, request_id: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        response = admin_get(gw, f"/admin/traces/{request_id}")
        return response.json() if response.status_code == 200 else None

    return wait_for(found, what=f"the trace of {request_id}")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def metrics(gw: GatewayProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse_metrics(httpx.get(gw.url + "/metrics", timeout=10).text)


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            out[(match.group(1), labels)] = float(match.group(3))
    return out


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)
