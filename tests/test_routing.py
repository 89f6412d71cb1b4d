"""Routing decisions: weights are honoured, ejected targets get no traffic, probes restore them;
rules and fallbacks never lead a request to a model its team may not use."""

from __future__ import annotations

import random

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.routing import Balancer, RetryBudget, backoff
from tests.builders import api_key, policy, team
from tests.conftest import KEYS, GatewayFactory, config_for
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.traceutil import trace


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0.5, max_value=10.0), min_size=2, max_size=5), st.integers(0, 2**32 - 1))
def test_weighted_choice_converges_to_the_weights(weights: list[float], seed: int) -> None:
    balancer = Balancer(weights, rng=random.Random(seed))
    n = 20_000
    counts = [0] * len(weights)
    for _ in range(n):
        i = balancer.choose()
        assert i is not None
        counts[i] += 1
        balancer.finished(i, ok=True)
    total = sum(weights)
    for w, c in zip(weights, counts, strict=True):
        assert abs(c / n - w / total) < 0.025


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 6),
    st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.floats(0, 100)), min_size=1, max_size=200),
    st.integers(0, 2**32 - 1),
)
def test_no_ejected_target_receives_traffic(size: int, events: list[tuple[int, bool, float]], seed: int) -> None:
    clock = Clock()
    balancer = Balancer([1.0] * size, eject_after=2, base_ejection_s=30, clock=clock, rng=random.Random(seed))
    for target_hint, ok, advance in events:
        clock.now += advance
        ejected_before = set(balancer.ejected())
        chosen = balancer.choose()
        if chosen is None:
            continue
        assert chosen not in ejected_before
        assert len(balancer.ejected()) <= size // 2
        balancer.finished(chosen, ok=ok if chosen != target_hint % size else False)


def test_flapping_target_is_ejected_probed_and_restored() -> None:
    clock = Clock()
    balancer = Balancer([1.0, 1.0], eject_after=5, base_ejection_s=30, clock=clock)
    for _ in range(5):
        balancer.health[0].outstanding += 1
        balancer.finished(0, ok=False)
    assert balancer.ejected() == [0]
    assert all(balancer.choose() == 1 for _ in range(50))
    clock.now += 30.1
    assert balancer.eligible() == [0, 1]
    probe = balancer.choose(exclude={1})
    assert probe == 0
    assert balancer.eligible() == [1]  # one probe at a time
    balancer.finished(0, ok=False)  # probe failed: ejected again, for twice as long
    assert balancer.ejected() == [0]
    clock.now += 59
    assert balancer.ejected() == [0]
    clock.now += 1.1
    assert balancer.choose(exclude={1}) == 0
    balancer.finished(0, ok=True)  # probe succeeded: restored
    assert balancer.ejected() == [] and balancer.eligible() == [0, 1]


def test_at_most_half_of_a_group_is_ejected() -> None:
    balancer = Balancer([1.0] * 3, eject_after=1)
    for i in range(3):
        balancer.finished(i, ok=False)
    assert len(balancer.ejected()) == 1


def test_sticky_users_stay_put_and_split_by_weight() -> None:
    balancer = Balancer([3.0, 1.0], sticky=True)
    picks = {f"user-{u}": balancer.choose(user=f"user-{u}") for u in range(2000)}
    assert all(balancer.choose(user=u) == i for u, i in list(picks.items())[:200])
    share = sum(1 for i in picks.values() if i == 0) / len(picks)
    assert 0.70 < share < 0.80


def test_least_outstanding_and_latency() -> None:
    lo = Balancer([1.0, 1.0], strategy="least_outstanding")
    lo.health[0].outstanding = 5
    assert lo.choose() == 1
    lat = Balancer([1.0, 1.0], strategy="latency")
    lat.finished(lat.choose(exclude={1}) or 0, ok=True, latency_s=0.5)
    lat.finished(lat.choose(exclude={0}) or 1, ok=True, latency_s=0.1)
    assert lat.choose() == 1


def test_retry_budget_and_backoff() -> None:
    budget = RetryBudget(requests=100, retries=19)
    assert budget.allow()
    budget.retries = 20
    assert not budget.allow()
    assert RetryBudget(requests=1, retries=2).allow()  # the floor of 3
    rng = random.Random(1)
    assert backoff(1, 2.0, remaining_s=5.0, rng=rng) == 2.0
    assert backoff(1, 7.0, remaining_s=5.0, rng=rng) is None
    assert all(0 <= (backoff(3, None, 10.0, rng) or 0) <= 0.4 for _ in range(100))


# -- a team's models bound its rules and fallbacks ------------------------------------------------
MODELS = """
[models.primary]
targets = [{ provider = "fake", model = "primary-up" }]
retries = 0
fallbacks = ["secret", "spare"]

[models.secret]
targets = [{ provider = "fake", model = "secret-up" }]
retries = 0

[models.spare]
targets = [{ provider = "fake", model = "spare-up" }]
retries = 0

[models.shared]
targets = [{ provider = "fake", model = "shared-up" }]
retries = 0
fallbacks = ["secret"]
cache = "all"
cache_scope = "shared"

[models.auto]
targets = [{ provider = "fake", model = "auto-up" }]
[[models.auto.rules]]
name = "vip"
model = "secret"
route_tag = "vip"
[[models.auto.rules]]
name = "vip-spare"
model = "spare"
route_tag = "vip"
"""
TEAMS = policy(
    {"narrow": team("primary", "spare", "auto", "shared"), "wide": team("*")},
    [api_key("narrow-app", "narrow", KEYS["beta"]), api_key("ops", "wide", KEYS["admin"], admin=True)],
)


def post(gw_url: str, key: str, model: str, rid: str, **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        gw_url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}", "x-request-id": rid, **headers}, timeout=30
    )


def test_a_rule_to_a_model_the_team_may_not_use_is_skipped(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url, MODELS), {"p.toml": TEAMS})
    wide = post(gw.url, KEYS["admin"], "auto", "wide-vip", **{"x-gateway-route-tag": "vip"})
    assert wide.status_code == 200 and wide.headers["x-gateway-target"] == "fake/secret-up"
    fake.reset()
    narrow = post(gw.url, KEYS["beta"], "auto", "narrow-vip", **{"x-gateway-route-tag": "vip"})
    assert narrow.status_code == 200 and narrow.headers["x-gateway-target"] == "fake/spare-up"  # the next rule that may serve
    assert [r.json["model"] for r in fake.requests] == ["spare-up"]
    seen = trace(gw, "narrow-vip")
    assert seen["route_rule"] == "vip-spare" and [a["target"] for a in seen["attempts"]] == ["fake/spare-up"]
    assert "secret" not in str(seen)
    # asking for the model itself is still a 403, as before
    denied = post(gw.url, KEYS["beta"], "secret", "narrow-direct")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"


def test_a_fallback_the_team_may_not_use_is_never_tried(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url, MODELS), {"p.toml": TEAMS})
    fake.script(Behavior(status=500), Behavior(status=500))  # the first two attempts fail, any later one succeeds
    narrow = post(gw.url, KEYS["beta"], "primary", "narrow-fallback")
    assert [r.json["model"] for r in fake.requests] == ["primary-up", "spare-up"]
    assert narrow.status_code == 502  # the allowed chain's own error, not the answer `secret` would have given
    seen = trace(gw, "narrow-fallback")
    assert [(a["target"], a["error_type"]) for a in seen["attempts"]] == [
        ("fake/primary-up", "upstream_server_error"),
        ("fake/spare-up", "upstream_server_error"),
    ]
    assert "secret" not in str(seen)
    fake.reset()
    fake.script(Behavior(status=500), Behavior(status=500))
    wide = post(gw.url, KEYS["admin"], "primary", "wide-fallback")  # a team that may use it: the whole chain
    assert wide.status_code == 200 and wide.headers["x-gateway-target"] == "fake/spare-up"
    assert [r.json["model"] for r in fake.requests] == ["primary-up", "secret-up", "spare-up"]


def test_a_shared_cache_entry_a_fallback_answered_is_not_read_by_a_team_that_may_not_use_it(
    gateway_factory: GatewayFactory, fake: FakeOpenAI
) -> None:
    gw = gateway_factory(config_for(fake.base_url, MODELS), {"p.toml": TEAMS})
    fake.script(Behavior(status=500))
    wide = post(gw.url, KEYS["admin"], "shared", "wide-shared")
    assert wide.status_code == 200 and wide.headers["x-gateway-target"] == "fake/secret-up"  # cached under `shared`
    assert post(gw.url, KEYS["admin"], "shared", "wide-again").headers["x-gateway-cache"] == "hit"
    fake.reset()
    narrow = post(gw.url, KEYS["beta"], "shared", "narrow-shared")
    assert narrow.status_code == 200 and narrow.headers["x-gateway-cache"] == "miss"
    assert narrow.headers["x-gateway-target"] == "fake/shared-up" and [r.json["model"] for r in fake.requests] == ["shared-up"]
