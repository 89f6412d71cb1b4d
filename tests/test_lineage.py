"""What the trace store keeps about routing and prompts: the record names the prompt version, the rule
that fired and every attempt, so an evaluation set can tell exactly what produced each answer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.builders import default_policy, team
from tests.conftest import KEYS, config_for, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.test_prompts import SUPPORT

ADMIN = {"authorization": f"Bearer {KEYS['admin']}"}
RULES = """
[models.auto]
targets = [{ provider = "fake", model = "big" }]
retries = 2
[[models.auto.rules]]
name = "tagged"
model = "gpt-4o-mini-retrying"
route_tag = "cheap"
[models.gpt-4o-mini-retrying]
targets = [{ provider = "fake", model = "small" }]
retries = 2
"""


def trace(url: str, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/admin/traces/{request_id}", headers=ADMIN)
        if r.status_code == 200:
            return r.json()  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"no trace for {request_id}")


def test_prompt_rule_and_attempts_are_recorded(tmp_path: Path, fake: FakeOpenAI) -> None:
    policy = {"p.toml": default_policy(alpha=team("gpt-*", "demo-*", "slow*", "auto"))}
    gw = start_gateway(tmp_path / "gw", config_for(fake.base_url, extra=RULES), policy, files={"prompts/support.toml": SUPPORT})
    try:
        headers = {"authorization": f"Bearer {KEYS['alpha']}", "x-request-id": "lineage-prompt"}
        body = {"model": "x", "messages": [], "prompt": {"id": "support-bot", "variables": {"product": "Acme", "question": "q"}}}
        assert httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers).status_code == 200
        record = trace(gw.url, "lineage-prompt")
        assert (record["prompt_id"], record["prompt_version"], record["prompt_label"]) == ("support-bot", 1, "production")
        assert len(record["prompt_hash"]) >= 16
        assert record["policy_version"] and record["model"] == "gpt-4o-mini"

        fake.script(Behavior(status=503))
        headers = {"authorization": f"Bearer {KEYS['alpha']}", "x-request-id": "lineage-rule", "x-gateway-route-tag": "cheap"}
        chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(gw.base_url + "/chat/completions", json=chat, headers=headers)
        assert r.status_code == 200 and r.headers["x-gateway-target"] == "fake/small"
        record = trace(gw.url, "lineage-rule")
        assert record["route_rule"] == "tagged" and record["target"] == "fake/small"
        attempts = record["attempts"]
        assert [(a["target"], a["status"]) for a in attempts] == [("fake/small", 502), ("fake/small", 200)]
        assert attempts[0]["error_type"] == "upstream_server_error"
    finally:
        gw.stop()
