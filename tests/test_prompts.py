"""The prompt registry end to end: real gateway processes, the official `openai` SDK as the client,
and the fake upstream showing exactly what a resolved prompt sends."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from tests.builders import api_key, policy, team
from tests.conftest import KEYS, GatewayFactory, GatewayProcess, config_for, start_gateway
from tests.fakes.openai_upstream import FakeOpenAI

SUPPORT = """
[prompts.support-bot]
labels = { production = 1, staging = 2 }

[[prompts.support-bot.versions]]
model = "gpt-4o-mini"
params = { temperature = 0.2, max_tokens = 256 }
variables = ["product", "question"]
messages = [
  { role = "system", content = "You are the support assistant for {{product}}." },
  { role = "user", content = "v1 {{question}}" },
]

[[prompts.support-bot.versions.tests]]
variables = { product = "Acme", question = "reset password" }
contains = "password"
max_latency_ms = 5000

[[prompts.support-bot.versions]]
model = "gpt-4o-mini"
params = { temperature = 0.7 }
variables = ["product", "question"]
messages = [
  { role = "system", content = "v2 support for {{ product }}." },
  { role = "user", content = "v2 {{question}}" },
]

[[prompts.support-bot.versions.tests]]
variables = { product = "Acme", question = "reset password" }
contains = "this is not in the answer"

[prompts.secret]
labels = { production = 1 }

[[prompts.secret.versions]]
model = "gpt-4o-mini"
messages = [{ role = "user", content = "secret" }]
"""

POLICY = policy(
    {"apps": team("gpt-*", "demo-*", prompts=["support-bot"]), "ops": team("*"), "narrow": team("demo-*")},
    [api_key("app", "apps", KEYS["alpha"]), api_key("narrow", "narrow", KEYS["beta"]), api_key("ops", "ops", KEYS["admin"], admin=True)],
)

VARS = {"product": "Acme", "question": "how do I log in?"}
V1 = [
    {"role": "system", "content": "You are the support assistant for Acme."},
    {"role": "user", "content": "v1 how do I log in?"},
]
ADMIN = {"authorization": f"Bearer {KEYS['admin']}"}


def prompt_files(prompts: dict[str, str]) -> dict[str, str]:
    return {f"prompts/{name}": text for name, text in prompts.items()}


def start(
    directory: Path, upstream: FakeOpenAI, prompts: dict[str, str], state: str = "", env: dict[str, str] | None = None
) -> GatewayProcess:
    return start_gateway(directory, config_for(upstream.base_url, state=state), {"p.toml": POLICY}, env=env, files=prompt_files(prompts))


@pytest.fixture
def gateways(gateway_factory: GatewayFactory) -> Callable[..., GatewayProcess]:
    """Gateways of this module's policy serving `prompts` (SUPPORT unless given), stopped after the test."""

    def make(
        upstream: FakeOpenAI, prompts: dict[str, str] | None = None, name: str = "gw", state: str = "", env: dict[str, str] | None = None
    ) -> GatewayProcess:
        config = config_for(upstream.base_url, state=state)
        return gateway_factory(
            config, {"p.toml": POLICY}, env=env, name=name, files=prompt_files({"support.toml": SUPPORT} if prompts is None else prompts)
        )

    return make


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    gw = start(tmp_path_factory.mktemp("prompts"), upstream, {"support.toml": SUPPORT})
    yield gw
    gw.stop()


@pytest.fixture
def gw(shared: GatewayProcess, fake: FakeOpenAI) -> GatewayProcess:
    return shared


def client(gw: GatewayProcess, key: str = KEYS["alpha"]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def move(gw: GatewayProcess, label: str, version: int, prompt: str = "support-bot", force: bool = False) -> httpx.Response:
    return httpx.put(
        f"{gw.url}/admin/prompts/{prompt}/labels/{label}", json={"version": version, "force": force}, headers=ADMIN, timeout=30
    )


def push(gw: GatewayProcess, prompt: str, version: dict[str, object], key: str = KEYS["admin"]) -> httpx.Response:
    return httpx.post(f"{gw.url}/admin/prompts/{prompt}/versions", json=version, headers={"authorization": f"Bearer {key}"}, timeout=30)


def served(
    gw: GatewayProcess, ref: str = "support-bot@production", variables: dict[str, object] | None = None, key: str = KEYS["alpha"]
) -> str:
    raw = client(gw, key).chat.completions.with_raw_response.create(
        model=f"prompt:{ref}", messages=[], extra_body={"prompt": {"variables": variables or VARS}}
    )
    return raw.headers["x-gateway-prompt"]


def eventually(check: Callable[[], bool], within: float) -> float:
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < within, f"not within {within} s"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_body_field_sends_exactly_the_rendered_messages_and_pinned_params(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    raw = client(gw).chat.completions.with_raw_response.create(
        model="whatever-the-sdk-wants",
        messages=[{"role": "user", "content": "and one more thing"}],
        extra_body={"prompt": {"id": "support-bot", "variables": VARS}},
    )
    assert raw.headers["x-gateway-prompt"] == "support-bot@1"
    assert raw.parse().choices[0].message.content == "echo: and one more thing"
    assert fake.requests[-1].json == {
        "model": "gpt-4o-mini-upstream",
        "messages": [*V1, {"role": "user", "content": "and one more thing"}],
        "temperature": 0.2,
        "max_tokens": 256,
    }


def test_model_shorthand_by_label_and_by_version_and_client_params_override(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    assert served(gw, "support-bot@staging") == "support-bot@2"
    assert fake.requests[-1].json["messages"] == [
        {"role": "system", "content": "v2 support for Acme."},
        {"role": "user", "content": "v2 how do I log in?"},
    ]
    assert fake.requests[-1].json["temperature"] == 0.7
    raw = client(gw).chat.completions.with_raw_response.create(
        model="prompt:support-bot@1", messages=[], temperature=0.0, extra_body={"prompt": {"variables": VARS}}
    )
    assert raw.headers["x-gateway-prompt"] == "support-bot@1"
    sent = fake.requests[-1].json
    assert (sent["messages"], sent["temperature"], sent["max_tokens"], sent["model"]) == (V1, 0.0, 256, "gpt-4o-mini-upstream")
    assert "prompt" not in sent


@pytest.mark.parametrize(
    ("variables", "status", "named"),
    [
        ({"product": "Acme"}, 400, "question"),
        ({**VARS, "tone": "rude"}, 400, "tone"),
        ({**VARS, "question": {"nested": 1}}, 400, "question"),
    ],
)
def test_bad_variables_are_a_400_naming_the_variable(gw: GatewayProcess, variables: dict[str, object], status: int, named: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        served(gw, "support-bot@1", variables)
    assert caught.value.status_code == status
    assert f"`{named}`" in caught.value.message


@pytest.mark.parametrize("ref", ["nope@production", "support-bot@9", "support-bot@canary"])
def test_unknown_prompt_version_or_label_is_a_404(gw: GatewayProcess, ref: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        served(gw, ref, key=KEYS["admin"])
    assert caught.value.code == "prompt_not_found"


def test_access_applies_to_the_prompt_id_and_to_the_pinned_model(gw: GatewayProcess) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        served(gw, "secret@production", {})
    assert caught.value.code == "prompt_not_allowed" and "secret" in caught.value.message
    with pytest.raises(openai.PermissionDeniedError) as pinned:
        client(gw, KEYS["beta"]).chat.completions.create(
            model="prompt:support-bot@1", messages=[], extra_body={"prompt": {"variables": VARS}}
        )
    assert pinned.value.code == "model_not_allowed"
    assert pinned.value.response.headers["x-gateway-prompt"] == "support-bot@1"  # lineage on errors after resolution


def test_a_streamed_prompt_response_carries_its_lineage(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    with client(gw).chat.completions.with_streaming_response.create(
        model="prompt:support-bot@2", messages=[], stream=True, extra_body={"prompt": {"variables": VARS}}
    ) as raw:
        assert raw.headers["x-gateway-prompt"] == "support-bot@2"
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "echo: v2 how do I log in?"
    assert fake.requests[-1].json["stream"] is True


def test_prompts_are_for_chat_only_and_a_completion_prompt_string_is_untouched(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    assert client(gw).completions.create(model="gpt-4o-mini", prompt="plain text").choices[0].text == "echo: plain text"
    with pytest.raises(openai.BadRequestError):
        client(gw).completions.create(model="prompt:support-bot@1", prompt="x")


def test_admin_endpoints_need_an_admin_key(gw: GatewayProcess) -> None:
    for key in (KEYS["alpha"], None):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        assert httpx.get(f"{gw.url}/admin/prompts", headers=headers).status_code in {401, 403}
    assert push(gw, "support-bot", {"model": "gpt-4o-mini", "messages": []}, key=KEYS["alpha"]).status_code == 403
    listing = httpx.get(f"{gw.url}/admin/prompts", headers=ADMIN).json()
    assert {"id": "support-bot", "versions": [1, 2], "labels": {"production": 1, "staging": 2}} in listing["prompts"]
    assert listing["last_error"] is None and listing["store"] == "sqlite"


def test_label_move_changes_the_served_version_without_restart_and_rolls_back(
    gateways: Callable[..., GatewayProcess], upstream: FakeOpenAI
) -> None:
    gw = gateways(upstream)
    assert served(gw) == "support-bot@1"
    assert move(gw, "production", 2, force=True).json()["forced"] is True  # v2's test fails: see the gate test
    assert served(gw) == "support-bot@2"
    rollback = move(gw, "production", 1).json()
    (case,) = rollback.pop("tests")
    assert rollback == {"id": "support-bot", "label": "production", "version": 1, "forced": False}
    assert case["ok"] is True and case["served"] == "support-bot@1" and 0 < case["latency_ms"] < 5000
    assert served(gw) == "support-bot@1"


def test_production_moves_are_gated_by_the_versions_tests(gateways: Callable[..., GatewayProcess], upstream: FakeOpenAI) -> None:
    gw = gateways(upstream)
    refused = move(gw, "production", 2)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "prompt_tests_failed"
    assert served(gw) == "support-bot@1"
    assert move(gw, "staging", 1).status_code == 200  # only production is gated
    forced = move(gw, "production", 2, force=True)
    assert forced.status_code == 200 and forced.json()["forced"] is True
    assert "this is not in the answer" in forced.json()["tests"][0]["failures"][0]
    assert "FORCED to version 2" in gw.log()
    assert httpx.get(f"{gw.url}/admin/prompts/support-bot", headers=ADMIN).json()["labels"]["production"]["forced"] is True


def test_pushed_versions_are_immutable_deduplicated_and_survive_a_restart(
    gateways: Callable[..., GatewayProcess], upstream: FakeOpenAI
) -> None:
    gw = gateways(upstream)
    version = {"model": "gpt-4o-mini", "variables": ["question"], "messages": [{"role": "user", "content": "v3 {{question}}"}]}
    first = push(gw, "support-bot", version)
    assert first.status_code == 201 and first.json()["version"] == 3
    again = push(gw, "support-bot", version)
    assert again.status_code == 200 and again.json() == {**first.json(), "created": False}
    assert push(gw, "fresh", version).json()["version"] == 1  # a runtime-only prompt
    bad = push(gw, "support-bot", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "{{ question.__class__ }}"}]})
    assert bad.status_code == 400 and "messages.0.content" in bad.json()["error"]["message"]
    assert move(gw, "production", 3).status_code == 200
    assert served(gw, variables={"question": "q"}) == "support-bot@3"
    gw.stop()
    again_gw = start_gateway(gw.directory, (gw.directory / "config.toml").read_text(), {"p.toml": POLICY})
    try:
        assert served(again_gw, variables={"question": "q"}) == "support-bot@3"
        assert push(again_gw, "support-bot", version).json()["version"] == 3
    finally:
        again_gw.stop()


def test_a_broken_prompt_file_keeps_the_last_good_set(gateways: Callable[..., GatewayProcess], upstream: FakeOpenAI) -> None:
    gw = gateways(upstream)
    path = gw.directory / "prompts" / "support.toml"

    def status() -> dict[str, object]:
        body: dict[str, object] = httpx.get(f"{gw.url}/admin/prompts", headers=ADMIN).json()
        return body

    path.write_text(SUPPORT.replace("{{product}}.", "{{product.__class__}}."))
    eventually(lambda: status()["last_error"] is not None, within=5)
    assert "prompts.support-bot.versions[0].messages[0].content" in str(status()["last_error"])
    assert served(gw) == "support-bot@1"
    path.write_text("this is [ not toml")
    eventually(lambda: "invalid TOML" in str(status()["last_error"]), within=5)
    assert served(gw, "support-bot@staging") == "support-bot@2"
    path.write_text(SUPPORT.replace("labels = { production = 1, staging = 2 }", "labels = { production = 2, staging = 2 }"))
    eventually(lambda: status()["last_error"] is None, within=5)
    assert served(gw) == "support-bot@2"


def test_a_dunder_template_is_rejected_or_literal_never_evaluated(gateways: Callable[..., GatewayProcess], upstream: FakeOpenAI) -> None:
    gw = gateways(upstream)
    upstream.reset()
    version = {
        "model": "gpt-4o-mini",
        "variables": ["__class__"],
        "messages": [{"role": "user", "content": "{{__class__}}|{{ __class__ }}"}],
    }
    number = push(gw, "dunder", version).json()["version"]
    assert served(gw, f"dunder@{number}", {"__class__": "{{__class__}}"}, key=KEYS["admin"]) == f"dunder@{number}"
    assert upstream.requests[-1].json["messages"] == [{"role": "user", "content": "{{__class__}}|{{__class__}}"}]
    undeclared = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "{{__class__}}"}]}
    assert push(gw, "dunder", undeclared).status_code == 400


def test_concurrent_label_moves_and_requests_never_see_a_half_updated_registry(
    gateways: Callable[..., GatewayProcess], upstream: FakeOpenAI
) -> None:
    gw = gateways(upstream)
    upstream.reset()
    stop = threading.Event()
    mismatches: list[str] = []

    moves: list[int] = []

    def mover() -> None:
        version = 1
        while not stop.is_set():
            version = 3 - version
            moves.append(move(gw, "production", version, force=True).status_code)

    deadline = time.monotonic() + 60

    def caller() -> None:
        c = client(gw)
        calls = 0
        while calls < 25 or (len(moves) < 4 and time.monotonic() < deadline):  # on a loaded machine, keep calling while labels move
            calls += 1
            raw = c.chat.completions.with_raw_response.create(
                model="prompt:support-bot", messages=[], extra_body={"prompt": {"variables": VARS}}
            )
            version = raw.headers["x-gateway-prompt"].split("@")[1]
            answer = raw.parse().choices[0].message.content or ""
            if not answer.startswith(f"echo: v{version} "):
                mismatches.append(f"header {version}, answer {answer!r}")

    threads = [threading.Thread(target=mover)] + [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert mismatches == []
    assert len(moves) >= 4 and set(moves) == {200}
    sent = [r.json for r in upstream.requests if r.path == "/v1/chat/completions"]
    seen = {(r["messages"][0]["content"][:2], r["temperature"], r.get("max_tokens")) for r in sent}
    assert seen <= {("Yo", 0.2, 256), ("v2", 0.7, None)} and len(seen) == 2  # both served, never mixed


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    url = "redis://127.0.0.1:6379/15"
    r = redis.Redis.from_url(url)
    try:
        r.ping()
    except redis.ConnectionError as exc:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"Redis is required under CI: {exc}") from None
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"test:prompts:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(r.scan_iter(match=prefix + "*"))
    if keys:
        r.delete(*keys)


def test_replicas_sharing_redis_see_pushes_and_label_moves_within_a_second(
    gateways: Callable[..., GatewayProcess], upstream: FakeOpenAI, redis_prefix: str
) -> None:
    options = {"state": 'limits = "redis://127.0.0.1:6379/15"', "env": {"GATEWAY_PROMPTS_REDIS_PREFIX": redis_prefix}}
    one = gateways(upstream, name="one", **options)
    two = gateways(upstream, name="two", **options)
    assert httpx.get(f"{two.url}/admin/prompts", headers=ADMIN).json()["store"] == "redis"
    number = push(
        one,
        "support-bot",
        {
            "model": "gpt-4o-mini",
            "variables": ["product", "question"],
            "messages": [{"role": "user", "content": "v3 {{product}} {{question}}"}],
        },
    ).json()["version"]
    assert number == 3
    assert move(one, "production", 3).status_code == 200
    took = eventually(lambda: served(two) == "support-bot@3", within=1.0)
    assert took < 1.0
    assert move(two, "production", 1).status_code == 200  # rollback through the other replica
    eventually(lambda: served(one) == "support-bot@1", within=1.0)
