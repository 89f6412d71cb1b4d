"""Limits: rpm, tpm, max_concurrent, the max_tokens cap and budgets, in one process and shared in Redis.

The arithmetic is property-tested directly (gateway/limits/rules.py) and through both backends;
the end-to-end tests drive real gateway processes with the `openai` SDK, against the Redis on
127.0.0.1:6379 (db 13, a unique key prefix per test) or a redis-server of the test's own that it
kills, pauses and restarts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import orjson
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.catalog import build_catalog
from gateway.config.load import build
from gateway.config.policies import Limits, Principal
from gateway.limits import rules
from gateway.limits.quota import Limit, Quota
from gateway.limits.rules import MINUTE_MS, Check, Settlement, Verdict
from gateway.limits.store import LimitStore, LimitsUnavailable, MemoryLimits, RedisLimits, open_limits
from gateway.metrics import Metrics
from gateway.pipeline.limit import Limiter
from gateway.pipeline.record import Record
from gateway.providers.base import Operation
from gateway.tokens import Tokenizer
from gateway.upstream import Pool
from tests.builders import api_key, policy, team
from tests.conftest import GatewayFactory, GatewayProcess, RedisServer, config_for, need_redis
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

SHARED = "redis://127.0.0.1:6379/13"
KEY = {
    name: f"sk-test-{name}-{uuid.uuid4().hex}" for name in ("limited", "own", "capped", "budget", "busy", "tokens", "thrifty", "pennies")
}
PRICED = """
[models."priced"]
targets = [{ provider = "fake", model = "gpt-4o-mini" }]
retries = 0
price = { input_per_million = 1000000.0, output_per_million = 1000000.0 }  # $1 a token: easy sums

[models."cheap"]  # $1 a million tokens, upstream name in no table: no longest answer known
targets = [{ provider = "fake", model = "house-model" }]
retries = 0
price = { input_per_million = 1.0, output_per_million = 1.0 }

[models."cheap-long"]
targets = [{ provider = "fake", model = "house-model" }]
retries = 0
price = { input_per_million = 1.0, output_per_million = 1.0, max_output_tokens = 100000 }
"""


def limits_policy(rpm: int = 3) -> str:
    """A team per limit; `limited` (keys limited-app and own-app, its own rpm 5) has `rpm`."""
    return policy(
        {
            "limited": team("*", rpm=rpm),
            "capped": team("*", max_tokens=50),
            "budget": team("*", budget_usd_per_day=50.0),
            "busy": team("*", max_concurrent=2),
            "tokens": team("*", tpm=40),
            "thrifty": team("*", budget_usd_per_day=0.05),  # 4096 output tokens of "cheap" fit ($0.004), 100000 do not ($0.1)
            "pennies": team("*", budget_usd_per_day=0.005),  # gpt-4o-mini: 4096 output tokens fit ($0.0025), its 16384 do not ($0.0098)
        },
        [api_key("limited-app", "limited", KEY["limited"]), api_key("own-app", "limited", KEY["own"], rpm=5)]
        + [api_key(f"{name}-app", name, KEY[name]) for name in ("capped", "budget", "busy", "tokens", "thrifty", "pennies")],
    )


POLICY = limits_policy()


def config(upstream: str, limits: str = "memory", state: str = "") -> str:
    return config_for(upstream, PRICED, state=f'limits = "{limits}"\n{state}')


def shared_limits() -> str:
    need_redis()
    return f"{SHARED}?prefix=gwtest-{uuid.uuid4().hex[:10]}:"


def client(gw: GatewayProcess, who: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY[who], max_retries=0, timeout=10)


def ask(gw: GatewayProcess, who: str, model: str = "gpt-4o-mini", **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEY[who]}"}, timeout=10)


def burst(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


# -- the arithmetic ------------------------------------------------------------------------------
operations = st.lists(
    st.tuples(st.integers(1, 40), st.floats(0, 1)),  # (worst-case cost reserved, at least 1; fraction of it really spent)
    min_size=1,
    max_size=60,
)


@given(budget=st.integers(0, 200), ops=operations, order=st.randoms(use_true_random=False))
def test_reservations_never_let_spend_pass_the_budget(budget: int, ops: list[tuple[int, float]], order: object) -> None:
    """Any interleaving of admissions and settlements: spent (and spent + reserved) stays within budget."""
    import random

    assert isinstance(order, random.Random)
    spent = reserved = 0
    held: list[tuple[int, int]] = []
    pending = list(ops)
    while pending or held:
        if pending and (not held or order.random() < 0.6):
            worst, fraction = pending.pop()
            if rules.fits(spent, reserved, budget, worst):
                reserved += worst
                held.append((worst, math.floor(worst * fraction)))
        else:
            worst, actual = held.pop(order.randrange(len(held)))
            spent, reserved = rules.settle(spent, reserved, worst, actual)
        assert spent + reserved <= budget
    assert reserved == 0


def test_a_spent_budget_fits_nothing() -> None:
    assert rules.fits(0, 0, 100, 100) and not rules.fits(100, 0, 100, 1) and not rules.fits(99, 1, 100, 1)
    assert not rules.fits(120, 0, 100, 0)  # spent past the budget (billed more than counted): not even a free request


@given(limit=st.integers(1, 50), arrivals=st.lists(st.floats(0, 3 * MINUTE_MS), min_size=1, max_size=200))
def test_gcra_admits_a_burst_of_the_limit_then_the_refill_rate(limit: int, arrivals: list[float]) -> None:
    tat = 0.0
    admitted: list[float] = []
    for now in sorted(arrivals):
        new, retry = rules.gcra(tat, now, limit, MINUTE_MS, 1)
        if retry > 0:
            # Retry-After is exact: at now + retry the request passes, a millisecond earlier it does not
            assert rules.gcra(tat, now + retry, limit, MINUTE_MS, 1)[1] == 0
            assert rules.gcra(tat, now + retry - 1, limit, MINUTE_MS, 1)[1] > 0
        else:
            tat = new
            admitted.append(now)
    first = sorted(arrivals)[0]
    # never more than the bucket (limit) plus what refilled since the first arrival
    assert len(admitted) <= limit + (admitted[-1] - first) * limit / MINUTE_MS + 1e-9
    assert len(admitted) >= min(limit, len(arrivals))


def test_periods_end_at_utc_midnight_and_month_start() -> None:
    now = dt.datetime(2026, 12, 31, 23, 59, 30, tzinfo=dt.UTC).timestamp() * 1000
    assert rules.period("day", now)[1] - now == 30_000
    assert rules.period("month", now) == ("m202612", dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)


# -- the two backends, one contract --------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    backend = open_limits(shared_limits() if request.param == "redis" else "memory")
    yield backend
    await backend.close()


async def settled(store: LimitStore, settlements: list[Settlement]) -> None:
    store.settle(settlements)
    if isinstance(store, RedisLimits):
        await store.idle()


async def test_rate_burst_then_exact_retry_after(store: LimitStore) -> None:
    checks = [Check("rate", "rpm:team:t", 4, 1, MINUTE_MS)]
    verdicts = [await store.admit(checks, "") for _ in range(6)]
    assert [v.admitted for v in verdicts] == [True] * 4 + [False] * 2
    assert 14_000 < verdicts[4].retry_ms <= 15_000  # one request refills every 15 s
    assert verdicts[4].failed == 0


async def test_all_checks_pass_or_none_is_applied(store: LimitStore) -> None:
    rpm = Check("rate", "rpm:team:a", 10, 1, MINUTE_MS)
    conc = Check("conc", "conc:team:a", 1, 0, 60_000)
    assert (await store.admit([rpm, conc], "lease-1")).admitted
    denied = await store.admit([rpm, conc], "lease-2")
    assert not denied.admitted and denied.failed == 1
    await settled(store, [Settlement("conc", "conc:team:a", 0, 0, 0, "lease-1")])
    assert (await store.admit([rpm, conc], "lease-3")).admitted
    # the denied admission took no rpm: 10 in the bucket, 2 used
    verdicts = [await store.admit([rpm], "") for _ in range(9)]
    assert [v.admitted for v in verdicts] == [True] * 8 + [False]


async def test_budget_reserve_and_settle(store: LimitStore) -> None:
    day = Check("day", "usd:team:b", 100, 60, 0)
    first = await store.admit([day], "")
    assert first.admitted and len(first.periods) == 1
    second = await store.admit([day], "")
    assert not second.admitted  # 60 reserved + 60 > 100
    now = time.time() * 1000
    assert abs(second.retry_ms - (rules.period("day", now)[1] - now)) < 5_000  # until 00:00 UTC
    await settled(store, [Settlement("budget", first.periods[0], 60, 10, 0)])
    assert (await store.admit([day], "")).admitted  # 10 spent + 60 reserved <= 100
    month = await store.admit([Check("month", "usd:team:b", 1_000, 1, 0)], "")
    assert month.periods[0].endswith(rules.period("month", time.time() * 1000)[0])  # Lua's calendar agrees with Python's


@settings(max_examples=25, deadline=None)
@given(ops=operations)
def test_memory_backend_holds_the_budget_property(ops: list[tuple[int, float]]) -> None:
    store = MemoryLimits()
    held = []
    for worst, fraction in ops:
        verdict = store.admit_now([Check("day", "usd:p", 100, worst, 0)], "")
        if verdict.admitted:
            held.append((verdict.periods[0], worst, math.floor(worst * fraction)))
        if len(held) > 3:
            key, worst_held, actual = held.pop(0)
            store.settle([Settlement("budget", key, worst_held, actual, 0)])
        spent, reserved = store.spent(f"usd:p:{rules.period('day', time.time() * 1000)[0]}")
        assert spent <= 100 and spent + reserved <= 100


async def test_a_dead_redis_fails_fast_behind_the_breaker() -> None:
    from tests.conftest import free_port

    store = RedisLimits(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    for _ in range(10):
        with pytest.raises(LimitsUnavailable):
            await store.admit([Check("rate", "x", 1, 1, MINUTE_MS)], "")
    assert time.monotonic() - started < 2 and not store.breaker.up
    await store.close()


# -- end to end ----------------------------------------------------------------------------------
def test_rpm_answers_429_with_exact_retry_after_and_keys_may_override(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config(fake.base_url), {"p.toml": POLICY})
    for _ in range(3):
        client(gw, "limited").chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as info:
        client(gw, "limited").chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    error = info.value
    assert error.code == "rpm_exceeded" and "team 'limited'" in error.message and "3 requests per minute (rpm)" in error.message
    assert 18 <= int(error.response.headers["retry-after"]) <= 20  # a request refills every 20 s
    assert KEY["limited"] not in error.response.text
    # the key with its own rpm counts on its own counter, with its own limit
    assert [ask(gw, "own").status_code for _ in range(6)] == [200] * 5 + [429]
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'gateway_rate_limit_rejections_total{reason="rpm"} 2.0' in metrics
    assert len(fake.requests) == 8


def test_two_processes_on_one_redis_admit_exactly_the_limit(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    limits = shared_limits()
    policy = limits_policy(rpm=10)
    first = gateway_factory(config(fake.base_url, limits), {"p.toml": policy})
    second = gateway_factory(config(fake.base_url, limits), {"p.toml": policy})
    answers = burst([lambda gw=gw: ask(gw, "limited") for gw in (first, second) for _ in range(15)])  # type: ignore[misc]
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 10 and statuses.count(429) == 20
    assert {code(a) for a in answers if a.status_code == 429} == {"rpm_exceeded"}
    assert {a.status_code for a in answers[:15]} == {200, 429} or {a.status_code for a in answers[15:]} == {200, 429}


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_max_concurrent_holds_a_lease_until_the_answer_is_out(gateway_factory: GatewayFactory, fake: FakeOpenAI, backend: str) -> None:
    gw = gateway_factory(config(fake.base_url, shared_limits() if backend == "redis" else "memory"), {"p.toml": POLICY})
    fake.script(*[Behavior(delay_s=1.0) for _ in range(2)])
    answers = burst([lambda: ask(gw, "busy") for _ in range(5)])
    assert sorted(a.status_code for a in answers) == [200, 200, 429, 429, 429]
    rejected = next(a for a in answers if a.status_code == 429)
    assert code(rejected) == "concurrency_exceeded" and "2 requests at once (max_concurrent)" in rejected.json()["error"]["message"]
    assert rejected.headers["retry-after"] == "1"
    # leases are released as answers finish (streams too): the next ones pass
    assert ask(gw, "busy").status_code == 200
    with client(gw, "busy").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c"}], stream=True
    ) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: a b c"
    assert [a.status_code for a in burst([lambda: ask(gw, "busy") for _ in range(2)])] == [200, 200]


def test_max_tokens_cap_rejects_larger_requests_and_fills_in_absent_ones(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config(fake.base_url), {"p.toml": POLICY})
    with pytest.raises(openai.BadRequestError) as info:
        client(gw, "capped").chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=51)
    assert info.value.code == "max_tokens_exceeded" and "cap of 50" in info.value.message
    assert ask(gw, "capped", max_completion_tokens=500).status_code == 400
    assert ask(gw, "capped", max_tokens=20).status_code == 200
    assert ask(gw, "capped").status_code == 200
    assert [r.json.get("max_tokens") for r in fake.requests] == [20, 50]


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_budget_burst_never_overspends(gateway_factory: GatewayFactory, fake: FakeOpenAI, backend: str) -> None:
    """$50 a day, $1 a token, max_tokens 10: a request may cost ~$18 (8 prompt + 10 output tokens
    counted by tiktoken) and really costs $3 (the fake counts 1 + 2 words). Concurrent requests
    can hold at most two reservations at once; one by one, eleven fit; never more than $50 spent."""
    limits = shared_limits() if backend == "redis" else "memory"
    gw = gateway_factory(config(fake.base_url, limits), {"p.toml": POLICY})
    fake.script(*[Behavior(delay_s=0.5) for _ in range(12)])
    answers = burst([lambda: ask(gw, "budget", model="priced", max_tokens=10) for _ in range(12)])
    assert sorted(a.status_code for a in answers)[:2] == [200, 200]
    assert sorted(a.status_code for a in answers)[2:] == [429] * 10
    spent = sum(float(a.headers["x-gateway-cost-usd"]) for a in answers if a.status_code == 200)
    while (answer := ask(gw, "budget", model="priced", max_tokens=10)).status_code == 200:
        spent += float(answer.headers["x-gateway-cost-usd"])
    assert spent == 33.0  # 11 requests of $3: a twelfth could cost up to $18, and 33 + 18 > 50
    assert code(answer) == "budget_exceeded" and "$50.00 per day (budget_usd_per_day)" in answer.json()["error"]["message"]
    midnight = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert abs(int(answer.headers["retry-after"]) - (midnight - dt.datetime.now(dt.UTC)).total_seconds()) < 5
    # a request it cannot reserve for is not sent: the fake saw only the admitted ones
    assert len(fake.requests) == 11
    # an unpriced model costs nothing against the budget, and the log says so
    assert ask(gw, "budget", model="demo-echo").status_code == 200
    assert "model demo-echo has no price" in gw.log()
    if backend == "redis":
        raw = redis.Redis.from_url(limits.partition("?")[0])
        prefix = limits.partition("prefix=")[2]
        (key,) = raw.keys(f"{prefix}usd:team:budget:*")
        assert int(raw.hget(key, "s")) == 33 * rules.NANO and int(raw.hget(key, "r")) == 0  # type: ignore[arg-type]
        assert 0 < raw.pttl(key) <= 2 * 86_400_000


def backend_limits(backend: str) -> str:
    return shared_limits() if backend == "redis" else "memory"


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_the_reservation_covers_every_choice_asked_for(gateway_factory: GatewayFactory, fake: FakeOpenAI, backend: str) -> None:
    """$50 a day at $1 a token; "hi" counts 8 prompt tokens, billed once however many choices: with
    max_tokens 12 one choice reserves $20, four reserve $56. A completion's `best_of` counts the same."""
    gw = gateway_factory(config(fake.base_url, backend_limits(backend)), {"p.toml": POLICY})
    with pytest.raises(openai.RateLimitError) as info:
        client(gw, "budget").chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}], max_tokens=12, n=4)
    assert info.value.code == "budget_exceeded" and "could cost up to $56.000000" in info.value.message
    completion = {"model": "priced", "prompt": "hi", "max_tokens": 15, "best_of": 4}  # 1 + 4 * 15 > 50
    refused = httpx.post(gw.base_url + "/completions", json=completion, headers={"authorization": f"Bearer {KEY['budget']}"})
    assert refused.status_code == 429 and code(refused) == "budget_exceeded"
    assert len(fake.requests) == 0
    assert ask(gw, "budget", model="priced", max_tokens=12, n=2).status_code == 200  # $32 reserved


def test_caps_and_choices_that_are_not_positive_integers_are_refused(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    """A cap of 0 or -1 used to reserve nothing against a budget (or a negative amount): a 400 naming the field."""
    gw = gateway_factory(config(fake.base_url), {"p.toml": POLICY})
    with pytest.raises(openai.BadRequestError) as info:
        client(gw, "budget").chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}], max_tokens=-1)
    assert info.value.param == "max_tokens"
    bad: list[tuple[str, object]] = [("max_tokens", v) for v in (0, 1.5, "x", True, -100)]
    bad += [("max_completion_tokens", v) for v in (-1, 0, 2.5)] + [("n", v) for v in (0, -2, 1.5, "4")]
    for field, value in bad:
        for who in ("budget", "capped", "limited"):  # a budget, a max_tokens cap, an rpm: every limited team
            answer = ask(gw, who, model="priced", **{field: value})
            assert answer.status_code == 400, (field, value, who, answer.text)
            assert answer.json()["error"]["param"] == field and answer.json()["error"]["type"] == "invalid_request_error"
    assert len(fake.requests) == 0


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_null_caps_are_absent_and_uncapped_requests_reserve_the_longest_answer(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, backend: str
) -> None:
    gw = gateway_factory(config(fake.base_url, backend_limits(backend)), {"p.toml": POLICY})
    # max_completion_tokens: null does not hide max_tokens: 100000 tokens at $1 a million are $0.10, over $0.05
    refused = ask(gw, "thrifty", model="cheap", max_completion_tokens=None, max_tokens=100_000)
    assert refused.status_code == 429 and code(refused) == "budget_exceeded"
    assert ask(gw, "thrifty", model="cheap", max_completion_tokens=None, max_tokens=1000).status_code == 200
    # uncapped: 4096 when the longest answer is unknown; the price's max_output_tokens when stated ...
    assert ask(gw, "thrifty", model="cheap").status_code == 200
    assert code(ask(gw, "thrifty", model="cheap-long")) == "budget_exceeded"
    assert ask(gw, "thrifty", model="cheap-long", max_tokens=1000).status_code == 200
    # ... in the config or in the bundled table (gpt-4o-mini: 16384 at $0.60 a million, $0.0098 > $0.005)
    assert code(ask(gw, "pennies", model="gpt-4o-mini")) == "budget_exceeded"
    assert ask(gw, "pennies", model="gpt-4o-mini", max_tokens=4096).status_code == 200
    assert len(fake.requests) == 4


OVERBILLED = orjson.dumps(
    {
        "id": "chatcmpl-over",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 2, "total_tokens": 102},
    }
)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_spent_budget_admits_nothing_not_even_a_free_request(gateway_factory: GatewayFactory, fake: FakeOpenAI, backend: str) -> None:
    """The provider billed more than was counted ($102 of a $50 budget: tool definitions, say, are
    not counted): from then on nothing starts, not even a request that would cost $0."""
    gw = gateway_factory(config(fake.base_url, backend_limits(backend)), {"p.toml": POLICY})
    assert ask(gw, "budget", model="demo-echo").status_code == 200  # free, with room left: admitted
    fake.script(Behavior(body=OVERBILLED, headers={"content-type": "application/json"}))
    spent = ask(gw, "budget", model="priced", max_tokens=10)  # reserves $18
    assert spent.status_code == 200 and float(spent.headers["x-gateway-cost-usd"]) == 102.0
    deadline = time.monotonic() + 5  # Redis settles just after the answer
    while (free := ask(gw, "budget", model="demo-echo")).status_code == 200:
        assert time.monotonic() < deadline, "a free request was still admitted with the budget spent"
        time.sleep(0.05)
    assert free.status_code == 429 and code(free) == "budget_exceeded"
    assert "$50.00 per day" in free.json()["error"]["message"]


def test_tpm_counts_prompt_tokens_up_front_and_settles_to_usage(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config(fake.base_url), {"p.toml": POLICY})
    long = " ".join(["word"] * 60)  # ~60 prompt tokens: more than tpm = 40 on its own
    refused = ask(gw, "tokens", messages=[{"role": "user", "content": long}])
    assert refused.status_code == 429 and code(refused) == "tpm_exceeded"
    assert "40 tokens per minute (tpm)" in refused.json()["error"]["message"]
    assert len(fake.requests) == 0
    # "hi" reserves 8 tokens (tiktoken) and is charged 3 (the fake's usage): about a dozen pass, then 429
    statuses = [ask(gw, "tokens").status_code for _ in range(20)]
    assert statuses[:10] == [200] * 10 and statuses[-1] == 429


def test_redis_outage_rate_limits_fail_open_budgets_closed_no_hang_and_recovery(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, own_redis: RedisServer
) -> None:
    limits = f"redis://127.0.0.1:{own_redis.port}/0"
    gw = gateway_factory(config(fake.base_url, limits), {"p.toml": limits_policy(rpm=1000)})
    flipped = gateway_factory(
        config(fake.base_url, limits, 'rate_limits_on_outage = "closed"\nbudgets_on_outage = "open"'),
        {"p.toml": limits_policy(rpm=1000)},
    )
    assert ask(gw, "limited").status_code == 200 and ask(gw, "budget", model="priced", max_tokens=10).status_code == 200

    def outage_answers() -> None:
        started = time.monotonic()
        for _ in range(5):
            assert ask(gw, "limited").status_code == 200  # rate limits fail open
            refused = ask(gw, "budget", model="priced", max_tokens=10)  # budgets fail closed
            assert refused.status_code == 503 and code(refused) == "limits_unavailable" and refused.headers["retry-after"] == "1"
            assert ask(flipped, "limited").status_code == 503  # the other way round, as configured
            assert ask(flipped, "budget", model="priced", max_tokens=10).status_code == 200
        assert time.monotonic() - started < 5  # 20 requests: nobody waits on a dead or hung Redis

    own_redis.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]  # hung: accepts, never answers
    try:
        outage_answers()
    finally:
        own_redis.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    own_redis.kill()  # gone: connections refused
    outage_answers()
    metrics = httpx.get(gw.url + "/metrics").text
    assert "gateway_limits_backend_up 0.0" in metrics
    assert 'gateway_limits_unchecked_total{outcome="rejected"} 10.0' in metrics
    assert 'gateway_limits_unchecked_total{outcome="admitted"} 10.0' in metrics
    assert "limits backend (Redis) failing" in gw.log()

    own_redis.start()  # back on the same port: the breaker's probe finds it within its cooldown
    deadline = time.monotonic() + 10
    while ask(gw, "budget", model="priced", max_tokens=10).status_code != 200:
        assert time.monotonic() < deadline, "did not recover"
        time.sleep(0.25)
    assert "gateway_limits_backend_up 1.0" in httpx.get(gw.url + "/metrics").text
    assert "limits backend (Redis) is answering again" in gw.log()


async def test_an_admission_whose_client_went_away_is_given_back(tmp_path: Path) -> None:
    """A request cancelled while its admission is on the way to Redis: once the verdict arrives,
    its concurrency lease, tokens and budget reservation are released (no reservation leaks)."""

    class Slow(MemoryLimits):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def admit(self, checks: list[Check], lease: str) -> Verdict:
            # like Redis: once sent, the admission is applied whatever becomes of the caller
            return await asyncio.shield(asyncio.ensure_future(self._apply(checks, lease)))

        async def _apply(self, checks: list[Check], lease: str) -> Verdict:
            await self.gate.wait()
            return self.admit_now(checks, lease)

    raw = {
        "providers": {"demo": {"kind": "mock"}},
        "models": {
            "priced": {"targets": [{"provider": "demo", "model": "echo"}], "price": {"input_per_million": 1e6, "output_per_million": 1e6}}
        },
    }
    config = build(raw, str(tmp_path / "c.toml"), tmp_path)
    catalog = build_catalog(config, Pool(10))
    quota = Quota(
        concurrent=Limit("max_concurrent", 1, "conc:team:t", "team 't'"),
        tpm=Limit("tpm", 1000, "tpm:team:t", "team 't'"),
        day=Limit("budget_usd_per_day", 50 * rules.NANO, "usd:team:t", "team 't'"),
    )
    principal = Principal("k", "t", False, frozenset({"priced"}), Limits(), None, None, quota=quota)
    store = Slow()
    limiter = Limiter(store, Metrics(frozenset()), True, False, Tokenizer())
    body = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    store.gate.set()  # a first request, admitted and settled as usual (and tiktoken's encoding loaded)
    first = await limiter.admit(principal, Operation.CHAT, dict(body), catalog.models["priced"], catalog)
    assert first is not None
    limiter.settle(first, Record("r1", "chat", time.time(), 0.0))
    store.gate.clear()
    waiting = asyncio.ensure_future(limiter.admit(principal, Operation.CHAT, body, catalog.models["priced"], catalog))
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.sleep(0.01)
    store.gate.set()
    await asyncio.sleep(0.01)
    assert waiting.cancelled()
    day = f"usd:team:t:{rules.period('day', time.time() * 1000)[0]}"
    assert store.spent(day) == (0, 0)  # reserved, then given back
    lease = await limiter.admit(principal, Operation.CHAT, dict(body), catalog.models["priced"], catalog)
    assert lease is not None  # the one concurrency slot is free again
