"""Fail closed (SPEC section 3): losing the policy files never opens the gateway, open mode is only
ever explicit and makes nobody an admin, team admins see only their team, and reloads apply one at
a time. Real gateway processes on real sockets; the official `openai` SDK and httpx as clients."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.builders import DEFAULT_KEYS, DEFAULT_POLICY, DEFAULT_TEAMS, api_key, default_policy, policy, team
from tests.conftest import KEYS, GatewayFactory, GatewayProcess, config_for, start_gateway
from tests.fakes.openai_upstream import FakeOpenAI
from tests.test_prompts import SUPPORT
from tests.traceutil import wait_for

TEAM_ADMINS = {"alpha": "sk-test-alpha-admin-0123456789abcdef", "beta": "sk-test-beta-admin-0123456789abcdef"}
TEAM_POLICY = default_policy(
    [api_key(f"{t}-admin", t, k, admin="team") for t, k in TEAM_ADMINS.items()], alpha=team("gpt-*", "demo-*", prompts=["support-bot"])
)
REVOKED = "sk-test-revoked-0123456789abcdef"


def bearer(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key is not None else {}


def chat(gw: GatewayProcess, key: str | None, model: str = "demo-echo", rid: str | None = None) -> httpx.Response:
    headers = bearer(key) | ({"x-request-id": rid} if rid else {})
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=10)


def admin(gw: GatewayProcess, key: str | None, path: str, method: str = "GET", **params: Any) -> httpx.Response:
    return httpx.request(method, gw.url + path, params=params, headers=bearer(key), timeout=30)


def serve(config: Path | None, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"} | {"FAKE_UPSTREAM_KEY": "x"}
    argv = [sys.executable, "-m", "gateway", *args, *(["--config", str(config)] if config else [])]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=60, check=False)


# no key at start -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "files", "extra"),
    [
        ("empty directory", {}, ""),
        ("misnamed directory", {"default.toml": DEFAULT_POLICY}, '[policies]\ndir = "policy"'),
        ("teams but no key", {"teams.toml": policy({"alpha": team("*")})}, ""),
    ],
)
def test_a_gateway_with_no_key_refuses_to_start(tmp_path: Path, case: str, files: dict[str, str], extra: str) -> None:
    config = config_for("http://127.0.0.1:9/v1")
    if extra:
        config = config.replace('[policies]\ndir = "policies"', extra)
    (tmp_path / "config.toml").write_text(config)
    (tmp_path / "policies").mkdir()
    for name, text in files.items():
        (tmp_path / "policies" / name).write_text(text)
    wrong = tmp_path / ("policy" if extra else "policies")
    started = serve(tmp_path / "config.toml", tmp_path, "serve", "--port", "0")
    assert started.returncode == 1, case
    for said in (str(wrong), "no API key", "gateway keys new", "[policies] open = true", str(tmp_path / "config.toml")):
        assert said in started.stderr, (case, said, started.stderr)
    checked = serve(tmp_path / "config.toml", tmp_path, "check")
    assert checked.returncode == 1 and str(wrong) in checked.stdout and "no API key" in checked.stdout, checked.stdout


def test_built_in_defaults_without_policies_refuse_to_start(tmp_path: Path) -> None:
    started = serve(None, tmp_path, "serve", "--port", "0")
    assert started.returncode == 1
    assert f"{tmp_path / 'policies'} holds no policy file" in started.stderr and "gateway keys new" in started.stderr
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "k.toml").write_text(DEFAULT_POLICY)
    assert serve(None, tmp_path, "check").returncode == 0  # the same defaults with a key are fine


# a reload that would leave no key --------------------------------------------------------------


def rejected(gw: GatewayProcess) -> str:
    status = admin(gw, KEYS["admin"], "/admin/policies").json()
    error: str = status["last_error"] or ""
    return error


def assert_closed(gw: GatewayProcess) -> None:
    assert chat(gw, None).status_code == 401
    assert chat(gw, "sk-anything").status_code == 401
    assert admin(gw, None, "/admin/traces").status_code == 401
    assert admin(gw, KEYS["alpha"], "/admin/traces").status_code == 403
    assert admin(gw, KEYS["admin"], "/admin/traces").status_code == 200
    assert chat(gw, KEYS["alpha"]).status_code == 200  # the last good set


def test_moving_the_policy_files_away_keeps_the_last_good_keys(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url))
    policy = gw.directory / "policies" / "default.toml"
    policy.rename(gw.directory / "default.toml.bak")
    error = wait_for(lambda: rejected(gw), timeout=6, what="the reload to be rejected")
    assert "no API key" in error and str(gw.directory / "policies") in error
    assert_closed(gw)
    status = admin(gw, KEYS["admin"], "/admin/reload", "POST").json()  # forced: rejected the same way
    assert status["files"] == ["default.toml"] and status["open_mode"] is False and "no API key" in status["last_error"]
    assert "ERROR gateway reload rejected" in gw.log()
    assert "policies reloaded" not in gw.log()

    (gw.directory / "default.toml.bak").rename(policy)  # back: the next reload is clean again
    wait_for(lambda: not rejected(gw), timeout=6, what="the error to clear")
    policy.write_text("[teams.broken\n")  # every file broken
    assert "invalid TOML" in wait_for(lambda: rejected(gw), timeout=6, what="the broken edit to be rejected")
    assert_closed(gw)


def test_a_config_edit_to_a_wrong_policy_dir_is_rejected(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url))
    config = gw.directory / "config.toml"
    config.write_text(config.read_text().replace('dir = "policies"', 'dir = "polices"'))
    error = wait_for(lambda: rejected(gw), timeout=6, what="the config edit to be rejected")
    assert str(gw.directory / "polices") in error and "no API key" in error
    assert_closed(gw)


# open mode -------------------------------------------------------------------------------------


def test_open_mode_admits_keyless_requests_and_makes_nobody_an_admin(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url, open_mode=True), policies={})
    assert "WARNING gateway OPEN MODE" in gw.log()
    assert chat(gw, None).status_code == 200
    sdk = openai.OpenAI(base_url=gw.base_url, api_key="sk-anything", max_retries=0)  # the SDK always sends some key
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]).choices
    for path, method in (("/admin/traces", "GET"), ("/admin/policies", "GET"), ("/admin/reload", "POST"), ("/admin/prompts", "GET")):
        for key in (None, "sk-anything", KEYS["admin"]):
            r = admin(gw, key, path, method)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", (path, key)


def test_open_mode_keeps_the_keys_of_policy_files(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url, open_mode=True))
    assert chat(gw, None, model="gpt-4o-mini").status_code == 200  # open: every model
    assert chat(gw, KEYS["beta"], model="gpt-4o-mini").status_code == 403  # beta is itself: demo-echo only
    assert admin(gw, KEYS["beta"], "/admin/traces").status_code == 403
    status = admin(gw, KEYS["admin"], "/admin/policies").json()
    assert status["open_mode"] is True and status["files"] == ["default.toml"]
    row = wait_for(lambda: admin(gw, KEYS["admin"], "/admin/traces", team="open").json()["data"], what="the open request's row")
    assert row[0]["key_name"] == "open" and row[0]["model"] == "gpt-4o-mini"

    (gw.directory / "policies" / "default.toml").unlink()  # open mode may lose its files: nobody is an admin then
    wait_for(lambda: chat(gw, KEYS["beta"], model="gpt-4o-mini").status_code == 200, timeout=6, what="the keys to go")
    assert admin(gw, KEYS["admin"], "/admin/policies").status_code == 401


def test_open_mode_reserves_the_team_name_open(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(config_for("http://127.0.0.1:9/v1", open_mode=True))
    (tmp_path / "policies").mkdir()
    alpha, beta, ops = DEFAULT_KEYS
    (tmp_path / "policies" / "p.toml").write_text(
        policy({"alpha": DEFAULT_TEAMS["alpha"], "open": DEFAULT_TEAMS["beta"]}, [alpha, {**beta, "team": "open"}, ops])
    )
    checked = serve(tmp_path / "config.toml", tmp_path, "check")
    assert checked.returncode == 1 and "policies.open: a team named 'open' is reserved" in checked.stdout, checked.stdout


# team admins -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teams(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    """Teams alpha (prompts = ["support-bot"]) and beta (no `prompts` list), each with a team admin."""
    prompts = {"prompts/support.toml": SUPPORT}
    gw = start_gateway(tmp_path_factory.mktemp("teams"), config_for(upstream.base_url), {"default.toml": TEAM_POLICY}, files=prompts)
    yield gw
    gw.stop()


def test_team_admins_see_only_their_teams_traces(teams: GatewayProcess) -> None:
    gw = teams
    assert chat(gw, KEYS["alpha"], rid="shared-id").status_code == 200
    assert chat(gw, KEYS["beta"], rid="shared-id").status_code == 200  # a client-chosen id can repeat across teams
    assert chat(gw, KEYS["beta"], rid="beta-only").status_code == 200
    wait_for(lambda: admin(gw, KEYS["admin"], "/admin/traces/beta-only").status_code == 200, what="the rows")
    alpha, beta = TEAM_ADMINS["alpha"], TEAM_ADMINS["beta"]

    rows = admin(gw, alpha, "/admin/traces").json()["data"]
    assert {r["team"] for r in rows} == {"alpha"} and [r["request_id"] for r in rows] == ["shared-id"]
    assert admin(gw, alpha, "/admin/traces", team="beta").json()["data"] == []
    assert {r["team"] for r in admin(gw, beta, "/admin/traces").json()["data"]} == {"beta"}
    assert {r["team"] for r in admin(gw, KEYS["admin"], "/admin/traces").json()["data"]} == {"alpha", "beta"}

    assert admin(gw, alpha, "/admin/traces/shared-id").json()["team"] == "alpha"  # never beta's, though newer
    assert admin(gw, beta, "/admin/traces/shared-id").json()["team"] == "beta"
    hidden = admin(gw, alpha, "/admin/traces/beta-only")
    missing = admin(gw, alpha, "/admin/traces/no-such-id")
    assert hidden.status_code == missing.status_code == 404 and hidden.json()["error"]["code"] == missing.json()["error"]["code"]
    assert admin(gw, alpha, "/admin/traces/shared-id", team="beta").status_code == 404

    assert admin(gw, KEYS["admin"], "/admin/traces/shared-id").json()["team"] == "beta"  # global: the newest row
    assert admin(gw, KEYS["admin"], "/admin/traces/shared-id", team="alpha").json()["team"] == "alpha"


def test_team_admins_may_not_call_the_whole_gateways_endpoints(teams: GatewayProcess) -> None:
    for path, method in (("/admin/policies", "GET"), ("/admin/reload", "POST")):
        r = admin(teams, TEAM_ADMINS["alpha"], path, method)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required", path
        assert admin(teams, KEYS["alpha"], path, method).status_code == 403
        assert admin(teams, KEYS["admin"], path, method).status_code == 200


def test_team_admins_own_only_their_teams_prompts(teams: GatewayProcess) -> None:
    gw = teams
    alpha, beta = TEAM_ADMINS["alpha"], TEAM_ADMINS["beta"]
    listed = admin(gw, alpha, "/admin/prompts").json()
    assert [p["id"] for p in listed["prompts"]] == ["support-bot"] and "files" not in listed
    assert {p["id"] for p in admin(gw, KEYS["admin"], "/admin/prompts").json()["prompts"]} == {"support-bot", "secret"}
    assert admin(gw, beta, "/admin/prompts").json()["prompts"] == []  # beta has no `prompts` list: owns none

    assert admin(gw, alpha, "/admin/prompts/support-bot").status_code == 200
    version = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "v3"}]}
    pushed = httpx.post(gw.url + "/admin/prompts/support-bot/versions", json=version, headers=bearer(alpha), timeout=10)
    assert pushed.status_code == 201
    moved = httpx.put(gw.url + "/admin/prompts/support-bot/labels/staging", json={"version": 3}, headers=bearer(alpha), timeout=30)
    assert moved.status_code == 200

    for key in (alpha, beta):
        for call in (
            lambda k: admin(gw, k, "/admin/prompts/secret"),
            lambda k: admin(gw, k, "/admin/prompts/secret", ref="production"),
            lambda k: httpx.post(gw.url + "/admin/prompts/secret/versions", json=version, headers=bearer(k), timeout=10),
            lambda k: httpx.put(gw.url + "/admin/prompts/secret/labels/production", json={"version": 1}, headers=bearer(k), timeout=10),
        ):
            r = call(key)
            assert r.status_code == 404 and r.json()["error"]["code"] == "prompt_not_found"
    assert admin(gw, beta, "/admin/prompts/support-bot").status_code == 404
    secret = admin(gw, KEYS["admin"], "/admin/prompts/secret").json()
    assert list(secret["labels"]) == ["production"] and len(secret["versions"]) == 1  # untouched
    assert admin(gw, KEYS["alpha"], "/admin/prompts").status_code == 403


# reloads one at a time -------------------------------------------------------------------------


def bulk_policy(n: int) -> str:
    """A policy file that takes the gateway a second or more to validate."""
    return policy({"bulk": team("demo-*")}, (api_key(f"bulk{i}", "bulk", str(i)) for i in range(n)))


def test_a_slow_reload_never_undoes_a_newer_one(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    revoked = policy({"gone": team("demo-*")}, [api_key("gone", "gone", REVOKED)])
    gw = gateway_factory(config_for(fake.base_url), {"default.toml": DEFAULT_POLICY, "revoked.toml": revoked})
    assert chat(gw, REVOKED).status_code == 200
    policies = gw.directory / "policies"
    (policies / "zz-bulk.toml").write_text(bulk_policy(60_000))  # validated last: every file is read by then
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(admin, gw, KEYS["admin"], "/admin/reload", "POST")  # reads the bulk set, for a while
        time.sleep(0.5)
        (policies / "revoked.toml").unlink()  # the key is revoked (and the bulk file goes) while it runs
        (policies / "zz-bulk.toml").unlink()
        started = time.monotonic()
        quick = pool.submit(admin, gw, KEYS["admin"], "/admin/reload", "POST")
        assert quick.result().json()["files"] == ["default.toml"]
        waited = time.monotonic() - started
        assert slow.result().status_code == 200
    assert chat(gw, REVOKED).status_code == 401, f"the slow reload undid the newer one (the quick one took {waited:.2f} s)"
    assert admin(gw, KEYS["admin"], "/admin/policies").json()["files"] == ["default.toml"]
    time.sleep(1.5)  # and the watcher, which saw both edits, settles on the same set
    assert chat(gw, REVOKED).status_code == 401
