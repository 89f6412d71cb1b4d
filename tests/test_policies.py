"""Policies as files: tool permissions, and edits that take effect live or, when broken, not at all."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_POLICY, KEYS, GatewayFactory, GatewayProcess, config_for, sha
from tests.fakes.openai_upstream import FakeOpenAI

TOOLS_POLICY = DEFAULT_POLICY.replace('[teams.beta]\nmodels = ["demo-echo"]', '[teams.beta]\nmodels = ["demo-echo"]\ntools = ["search_kb"]')
NEW_KEY = "sk-test-newcomer-0123456789abcdef"


def tool(name: str) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


def chat(gw: GatewayProcess, key: str, **extra: object) -> httpx.Response:
    body = {"model": "demo-echo", "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)


def eventually(check: Callable[[], bool], within: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"not within {within} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_function_tools_outside_the_team_list_are_403(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url), {"p.toml": TOOLS_POLICY})
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEYS["beta"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(
            model="demo-echo", messages=[{"role": "user", "content": "x"}], tools=[tool("search_kb"), tool("rm_rf")]
        )  # type: ignore[list-item]
    assert info.value.code == "tool_not_allowed" and "`rm_rf`" in str(info.value)
    assert chat(gw, KEYS["beta"], tools=[tool("search_kb")]).status_code == 200
    assert chat(gw, KEYS["alpha"], tools=[tool("rm_rf")]).status_code == 200  # no `tools` list: any tool


def test_policy_edits_apply_live_and_a_broken_edit_changes_nothing(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url))
    admin = {"authorization": f"Bearer {KEYS['admin']}"}
    before = httpx.get(gw.url + "/admin/policies", headers=admin).json()
    assert chat(gw, NEW_KEY).status_code == 401
    extra = gw.directory / "policies" / "newcomer.toml"
    extra.write_text(
        f'[teams.newcomers]\nmodels = ["demo-*"]\n[[keys]]\nname = "newcomer"\nteam = "newcomers"\nsha256 = "{sha(NEW_KEY)}"\n'
    )
    assert eventually(lambda: chat(gw, NEW_KEY).status_code == 200, within=2.5) < 2.5
    status = httpx.get(gw.url + "/admin/policies", headers=admin).json()
    assert status["version"] != before["version"] and status["files"] == ["default.toml", "newcomer.toml"] and status["last_error"] is None

    extra.write_text(extra.read_text() + "\n[teams.broken\n")  # a syntax error
    eventually(lambda: httpx.get(gw.url + "/admin/policies", headers=admin).json()["last_error"] is not None, within=2.5)
    status = httpx.get(gw.url + "/admin/policies", headers=admin).json()
    assert "newcomer.toml" in status["last_error"] and "invalid TOML" in status["last_error"]
    assert chat(gw, NEW_KEY).status_code == 200 and chat(gw, KEYS["alpha"]).status_code == 200  # the last good set
    assert "policy reload rejected" in gw.log()

    extra.unlink()
    r = httpx.post(gw.url + "/admin/reload", headers=admin)  # forced, without waiting for the watcher
    assert r.status_code == 200 and r.json()["files"] == ["default.toml"] and r.json()["last_error"] is None
    assert chat(gw, NEW_KEY).status_code == 401
