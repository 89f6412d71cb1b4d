"""Policies as files: tool permissions, and edits that take effect live or, when broken, not at all."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.builders import api_key, default_policy, policy, team
from tests.conftest import KEYS, GatewayFactory, GatewayProcess, config_for
from tests.fakes.openai_upstream import FakeOpenAI

TOOLS_POLICY = default_policy(beta=team("demo-echo", tools=["search_kb"]))
NEW_KEY = "sk-test-newcomer-0123456789abcdef"


def tool(name: str) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


def chat(gw: GatewayProcess, key: str, model: str = "demo-echo", **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
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
    extra.write_text(policy({"newcomers": team("demo-*")}, [api_key("newcomer", "newcomers", NEW_KEY)]))
    assert eventually(lambda: chat(gw, NEW_KEY).status_code == 200, within=2.5) < 2.5
    status = httpx.get(gw.url + "/admin/policies", headers=admin).json()
    assert status["version"] != before["version"] and status["files"] == ["default.toml", "newcomer.toml"] and status["last_error"] is None

    extra.write_text(extra.read_text() + "\n[teams.broken\n")  # a syntax error
    eventually(lambda: httpx.get(gw.url + "/admin/policies", headers=admin).json()["last_error"] is not None, within=2.5)
    status = httpx.get(gw.url + "/admin/policies", headers=admin).json()
    assert "newcomer.toml" in status["last_error"] and "invalid TOML" in status["last_error"]
    assert chat(gw, NEW_KEY).status_code == 200 and chat(gw, KEYS["alpha"]).status_code == 200  # the last good set
    assert "reload rejected" in gw.log()

    extra.unlink()
    r = httpx.post(gw.url + "/admin/reload", headers=admin)  # forced, without waiting for the watcher
    assert r.status_code == 200 and r.json()["files"] == ["default.toml"] and r.json()["last_error"] is None
    assert chat(gw, NEW_KEY).status_code == 401


def version_of(files: dict[str, str]) -> str:
    """The policy version the gateway computes: a hash of every file, in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()[:16]


def test_no_request_sees_a_mix_of_old_and_new_policies(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    """Two policy sets that disagree about the tool `a`; requests run while the set is flipped back
    and forth. Each request's answer must match the policy version its trace says admitted it."""
    allows = default_policy(beta=team("demo-echo", tools=["a"]))
    denies = default_policy(beta=team("demo-echo", tools=["b"]))
    versions = {version_of({"p.toml": allows}): 200, version_of({"p.toml": denies}): 403}
    gw = gateway_factory(config_for(fake.base_url), {"p.toml": allows})
    path = gw.directory / "policies" / "p.toml"
    stop = threading.Event()

    def flip() -> None:
        for i in itertools.count():
            if stop.wait(0.15):
                return
            tmp = path.with_suffix(".tmp")
            tmp.write_text(denies if i % 2 == 0 else allows)
            os.replace(tmp, path)
            httpx.post(gw.url + "/admin/reload", headers={"authorization": f"Bearer {KEYS['admin']}"}, timeout=10)

    def run(_: int) -> tuple[str, int]:
        answer = chat(gw, KEYS["beta"], tools=[tool("a")])
        return answer.headers["x-request-id"], answer.status_code

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(run, range(240)))
    finally:
        stop.set()
        flipper.join()
    assert {status for _, status in outcomes} == {200, 403}  # both sets were in force at some point
    admin = {"authorization": f"Bearer {KEYS['admin']}"}
    for rid, status in outcomes:
        trace = None
        for _ in range(50):
            found = httpx.get(f"{gw.url}/admin/traces/{rid}", headers=admin)
            if found.status_code == 200:
                trace = found.json()
                break
            time.sleep(0.1)
        assert trace is not None, rid
        assert versions[trace["policy_version"]] == status, (rid, trace["policy_version"], status)


def test_config_edits_apply_live_and_a_broken_edit_changes_nothing(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    text = config_for(fake.base_url)
    gw = gateway_factory(text)
    admin = {"authorization": f"Bearer {KEYS['admin']}"}
    before = httpx.get(gw.url + "/admin/policies", headers=admin).json()
    assert chat(gw, KEYS["alpha"], model="demo-two").status_code == 404
    config = gw.directory / "config.toml"
    added = text + '\n[models."demo-two"]\ntargets = [{ provider = "demo", model = "two" }]\n'
    config.write_text(added)
    assert eventually(lambda: chat(gw, KEYS["alpha"], model="demo-two").status_code == 200, within=2.5) < 2.5
    status = httpx.get(gw.url + "/admin/policies", headers=admin).json()
    assert status["config"] != before["config"] and status["version"] == before["version"] and status["last_error"] is None
    models = httpx.get(gw.base_url + "/models", headers={"authorization": f"Bearer {KEYS['alpha']}"}).json()
    assert "demo-two" in [m["id"] for m in models["data"]]

    config.write_text(added.replace("retries = 0", "retries = 0\nretires = 1"))  # a typo: unknown key
    eventually(lambda: httpx.get(gw.url + "/admin/policies", headers=admin).json()["last_error"] is not None, within=2.5)
    error = httpx.get(gw.url + "/admin/policies", headers=admin).json()["last_error"]
    assert "config.toml: models.gpt-4o-mini.retires: unknown key" in error
    assert chat(gw, KEYS["alpha"], model="demo-two").status_code == 200  # the last good config stays

    config.write_text(added.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\nmax_in_flight = 10'))
    eventually(lambda: "takes effect at the next restart" in gw.log(), within=2.5)
    assert "config [server] changed" in gw.log()
    assert httpx.get(gw.url + "/admin/policies", headers=admin).json()["last_error"] is None
