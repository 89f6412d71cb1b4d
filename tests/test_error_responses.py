"""Every error the gateway answers, whichever endpoint or handler raised it, leaves through one path:
an OpenAI-shaped body and `x-request-id` (the client's own, or a new one). API, admin, prompt admin,
unknown paths and methods, and an unhandled exception."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import load
from tests.conftest import DEFAULT_POLICY, KEYS, UPSTREAM_KEY, GatewayProcess, config_for, start_gateway
from tests.fakes.openai_upstream import FakeOpenAI
from tests.test_fail_closed import TEAM_ADMINS, TEAM_POLICY
from tests.test_prompts import SUPPORT

NEW_ID = re.compile(r"^[0-9a-f]{32}$")
V1 = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

# (method, path, key, JSON body, status, code)
ERRORS: list[tuple[str, str, str | None, Any, int, str | None]] = [
    ("GET", "/v1/nothing-here", None, None, 404, "unknown_url"),
    ("GET", "/admin", KEYS["admin"], None, 404, "unknown_url"),
    ("GET", "/v1/chat/completions", KEYS["alpha"], None, 405, "method_not_allowed"),
    ("DELETE", "/admin/policies", KEYS["admin"], None, 405, "method_not_allowed"),
    ("POST", "/v1/chat/completions", None, V1, 401, "missing_api_key"),
    ("POST", "/v1/chat/completions", KEYS["alpha"], {**V1, "model": "gpt-9"}, 404, "model_not_found"),
    ("GET", "/v1/models", "sk-not-a-key-0123456789", None, 401, "invalid_api_key"),
    ("GET", "/admin/policies", None, None, 401, "missing_api_key"),
    ("GET", "/admin/policies", KEYS["alpha"], None, 403, "admin_required"),
    ("POST", "/admin/reload", TEAM_ADMINS["alpha"], None, 403, "admin_required"),
    ("GET", "/admin/traces", KEYS["admin"], None, 400, "invalid_value"),  # ?order=sideways, below
    ("GET", "/admin/traces/no-such-request", KEYS["admin"], None, 404, "trace_not_found"),
    ("GET", "/admin/prompts", KEYS["alpha"], None, 403, "admin_required"),
    ("GET", "/admin/prompts/secret", TEAM_ADMINS["alpha"], None, 404, "prompt_not_found"),
    ("GET", "/admin/prompts/support-bot", KEYS["admin"], None, 404, "prompt_not_found"),  # ?ref=9, below
    ("POST", "/admin/prompts/support-bot/versions", KEYS["admin"], {"model": 3}, 400, "invalid_prompt"),
    ("POST", "/admin/prompts/support-bot/versions", KEYS["admin"], "[not json", 400, "invalid_json"),
    ("PUT", "/admin/prompts/support-bot/labels/staging", KEYS["admin"], {"versio": 1}, 400, "invalid_value"),
    ("PUT", "/admin/prompts/support-bot/labels/production", KEYS["admin"], {"version": 2}, 409, "prompt_tests_failed"),
]
QUERIES = {"/admin/traces": {"order": "sideways"}, "/admin/prompts/support-bot": {"ref": "9"}}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    """Teams alpha (owns the prompt support-bot, has a team admin) and beta; prompts support-bot and secret."""
    directory = tmp_path_factory.mktemp("errors")
    (directory / "prompts").mkdir()
    (directory / "prompts" / "support.toml").write_text(SUPPORT)
    process = start_gateway(directory, config_for(upstream.base_url), {"default.toml": TEAM_POLICY})
    yield process
    process.stop()


def call(gw: GatewayProcess, method: str, path: str, key: str | None, body: Any, **headers: str) -> httpx.Response:
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    content = body.encode() if isinstance(body, str) else None
    json = None if isinstance(body, str) else body
    return httpx.request(method, gw.url + path, json=json, content=content, params=QUERIES.get(path), headers=headers, timeout=30)


def assert_openai_error(r: httpx.Response, status: int, code: str | None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str) and error["message"]
    assert error["code"] == code
    assert "Traceback" not in r.text and UPSTREAM_KEY not in r.text
    assert not any(key in r.text for key in (*KEYS.values(), *TEAM_ADMINS.values()))


@pytest.mark.parametrize(("method", "path", "key", "body", "status", "code"), ERRORS)
def test_every_error_is_openai_shaped_with_a_request_id(
    gw: GatewayProcess, method: str, path: str, key: str | None, body: Any, status: int, code: str | None
) -> None:
    given = call(gw, method, path, key, body, **{"x-request-id": "client-chose-this.1"})
    assert_openai_error(given, status, code)
    assert given.headers["x-request-id"] == "client-chose-this.1"
    fresh = call(gw, method, path, key, body)
    assert_openai_error(fresh, status, code)
    assert NEW_ID.match(fresh.headers["x-request-id"]), fresh.headers


def test_admin_answers_carry_a_request_id_too(gw: GatewayProcess) -> None:
    headers = {"authorization": f"Bearer {KEYS['admin']}", "x-request-id": "ok-1"}
    for path in ("/admin/policies", "/admin/traces", "/admin/prompts", "/admin/prompts/support-bot"):
        r = httpx.get(gw.url + path, headers=headers, timeout=30)
        assert r.status_code == 200 and r.headers["x-request-id"] == "ok-1", (path, r.text)


def test_an_unhandled_exception_is_a_500_with_a_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing public raises outside the error tree (that would be a bug), so the app as built is
    given one more route that does; the handler it reaches is the one every route has."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.toml").write_text(DEFAULT_POLICY)
    (tmp_path / "config.toml").write_text(config_for("http://127.0.0.1:9/v1"))
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", UPSTREAM_KEY)
    app = create_app(load(tmp_path / "config.toml"))

    async def broken(request: Any) -> Any:
        raise RuntimeError("a bug, with sk-secret-in-the-exception")

    app.add_route("/broken", broken)

    async def get(**headers: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.get("/broken", headers=headers)

    with caplog.at_level(logging.ERROR, logger="gateway"):
        r = asyncio.run(get(**{"x-request-id": "boom-1"}))
    assert_openai_error(r, 500, "internal_error")
    assert r.headers["x-request-id"] == "boom-1" and "sk-secret" not in r.text
    assert "unhandled error on /broken (request boom-1)" in caplog.text
    assert NEW_ID.match(asyncio.run(get()).headers["x-request-id"])
