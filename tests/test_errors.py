"""Bad input and bad upstreams: each has a defined, OpenAI-shaped outcome and leaks nothing."""

from __future__ import annotations

import socket
import time

import httpx
import openai
import pytest

from tests.conftest import KEYS, UPSTREAM_KEY, GatewayFactory, GatewayProcess, config_for, free_port
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def post(gw: GatewayProcess, body: bytes | dict[str, object], key: str | None = KEYS["alpha"], **headers: str) -> httpx.Response:
    h = {"content-type": "application/json", **headers}
    if key is not None:
        h["authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else httpx.Request("POST", "http://x", json=body).content
    return httpx.post(gw.base_url + "/chat/completions", content=content, headers=h, timeout=20)


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    assert "Traceback" not in r.text and UPSTREAM_KEY not in r.text and KEYS["alpha"] not in r.text
    assert r.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


def test_malformed_json_is_400(gateway: GatewayProcess) -> None:
    assert_openai_error(post(gateway, b'{"model": "gpt-4o-mini", "messages": ['), 400, "invalid_json")
    assert_openai_error(post(gateway, b"[1, 2]"), 400, "invalid_json")


def test_schema_violations_are_400(gateway: GatewayProcess) -> None:
    assert assert_openai_error(post(gateway, {"messages": CHAT["messages"]}), 400)["param"] == "model"
    assert assert_openai_error(post(gateway, {"model": "gpt-4o-mini"}), 400)["param"] == "messages"
    assert assert_openai_error(post(gateway, {**CHAT, "stream": "yes"}), 400)["param"] == "stream"


def test_oversized_body_is_413(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024 + 10)}]}
    assert_openai_error(post(gateway, big), 413, "request_too_large")

    def chunked() -> object:
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(11):
            yield b"y" * (1024 * 1024)
        yield b'"}]}'

    r = httpx.post(gateway.base_url + "/chat/completions", content=chunked(), headers={"authorization": f"Bearer {KEYS['alpha']}"})  # type: ignore[arg-type]
    assert_openai_error(r, 413)
    assert fake.requests == []


def test_unknown_model_is_404(gateway: GatewayProcess) -> None:
    assert_openai_error(post(gateway, {**CHAT, "model": "gpt-9-ultra"}), 404, "model_not_found")


def test_missing_and_unknown_keys_are_401(gateway: GatewayProcess) -> None:
    assert_openai_error(post(gateway, CHAT, key=None), 401, "missing_api_key")
    r = post(gateway, CHAT, key="sk-wrong-key-that-is-long-enough")
    assert_openai_error(r, 401, "invalid_api_key")
    assert "sk-wrong-key" not in r.text


def test_model_not_allowed_is_403(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        openai.OpenAI(base_url=gateway.base_url, api_key=KEYS["beta"], max_retries=0).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert info.value.code == "model_not_allowed"


def test_upstream_garbage_is_502(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(body=b"<html>bad gateway</html>"), Behavior(body=b'{"choices": "nope"}'))
    assert_openai_error(post(gateway, CHAT), 502, "upstream_garbage")
    assert_openai_error(post(gateway, CHAT), 502, "upstream_garbage")


def test_upstream_server_error_is_502(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(status=500), Behavior(status=529))
    assert_openai_error(post(gateway, CHAT), 502, "upstream_server_error")
    assert_openai_error(post(gateway, CHAT), 502, "upstream_server_error")


def test_upstream_auth_failure_is_502_without_the_message(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    body = (
        b'{"error": {"message": "Incorrect API key provided: sk-upstr***b4a", "type": "invalid_request_error", "code": "invalid_api_key"}}'
    )
    fake.script(Behavior(status=401, body=body))
    error = assert_openai_error(post(gateway, CHAT), 502, "upstream_auth")
    assert "sk-upstr" not in str(error["message"])


def test_upstream_client_errors_pass_through(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    body = (
        b'{"error": {"message": "This model\'s maximum context length is 128000 tokens.", "type": "invalid_request_error", "code": null}}'
    )
    fake.script(Behavior(status=400, body=body))
    error = assert_openai_error(post(gateway, CHAT), 400)
    assert error["message"] == "This model's maximum context length is 128000 tokens."


def test_upstream_429_keeps_retry_after(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(status=429, headers={"Retry-After": "7"}))
    r = post(gateway, CHAT)
    assert_openai_error(r, 429, "upstream_rate_limited")
    assert r.headers["retry-after"] == "7"


def test_upstream_timeout_is_504(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(delay_s=3.0))  # the config's first_byte_timeout_s is 2
    started = time.monotonic()
    assert_openai_error(post(gateway, CHAT), 504, "first_byte_timeout")
    assert 1.8 < time.monotonic() - started < 3.0


def test_refused_connection_is_502(gateway_factory: GatewayFactory) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    gw = gateway_factory(config_for(f"http://127.0.0.1:{dead}/v1"))
    assert_openai_error(post(gw, CHAT), 502, "connect_error")
    assert free_port()  # the helper still works after the gateway grabbed its port


def test_unknown_path_and_method(gateway: GatewayProcess) -> None:
    assert_openai_error_404 = httpx.get(gateway.url + "/v1/nothing-here")
    assert assert_openai_error_404.status_code == 404 and assert_openai_error_404.json()["error"]["code"] == "unknown_url"
    r = httpx.get(gateway.base_url + "/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_no_key_in_the_log(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(status=500), Behavior(delay_s=3.0))
    post(gateway, CHAT)
    post(gateway, CHAT)
    post(gateway, CHAT, key="sk-never-logged-canary-123456")
    log = gateway.log()
    assert "failed" in log  # 5xx are logged...
    for secret in (UPSTREAM_KEY, KEYS["alpha"], "sk-never-logged-canary-123456"):
        assert secret not in log  # ...without any key
