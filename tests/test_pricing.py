"""Every request is costed: prices resolve once at load (target > model > bundled table > unpriced),
and the cost reaches the client (header, and the usage object when the gateway writes the body)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway.catalog import build_catalog
from gateway.config.load import build
from gateway.config.schema import Price
from gateway.pipeline.dispatch import closing_usage
from gateway.pipeline.record import Record
from gateway.pricing import cost_usd, load_table, lookup, resolve
from gateway.providers.base import Operation, StreamState, Usage
from gateway.upstream import Pool
from tests.builders import fake_provider
from tests.conftest import KEYS, GatewayProcess, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

TABLE = load_table()
MINI = TABLE["gpt-4o-mini"]


# ---- the bundled table and lookups -------------------------------------------------------------


def test_bundled_table_states_its_date_and_covers_the_vendors() -> None:
    text = (Path(__file__).parent.parent / "gateway" / "data" / "prices.toml").read_text()
    assert re.search(r"List prices as published by each vendor on \d{4}-\d{2}-\d{2}", text)
    for model in (
        "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3", "o4-mini", "text-embedding-3-small", "text-embedding-3-large",
        "claude-3-5-haiku", "claude-3-7-sonnet", "claude-sonnet-4", "claude-opus-4",
        "gemini-1.5-flash", "gemini-1.5-pro", "gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro",
    ):  # fmt: skip
        assert model in TABLE, model
    assert all(p.input_per_million >= 0 and p.output_per_million >= 0 for p in TABLE.values())
    assert all(p.cache_write_per_million is not None for name, p in TABLE.items() if name.startswith("claude"))


def test_a_name_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        load_table(
            '[a]\n"m" = { input_per_million = 1, output_per_million = 1 }\n[b]\n"m" = { input_per_million = 2, output_per_million = 2 }\n'
        )


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # dated snapshot: longest listed prefix, not gpt-4o
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # an exact row beats its family
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-haiku@20241022", "claude-3-5-haiku"),  # Vertex-style version suffix
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("models/gemini-2.0-flash", "gemini-2.0-flash"),
        ("gemini-2.5-flash-lite-preview-06-17", "gemini-2.5-flash-lite"),
        ("anthropic/claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("gpt-4oxyz", None),  # a prefix counts only at a boundary
        ("llama-3.1-8b-instruct", None),
        ("echo", None),
    ],
)
def test_lookup(model: str, expected: str | None) -> None:
    assert lookup(TABLE, model) == (TABLE[expected] if expected else None)


def test_resolution_order() -> None:
    target, model = Price(input_per_million=1, output_per_million=1), Price(input_per_million=2, output_per_million=2)
    assert resolve(target, model, TABLE, "my-own-model") is target
    assert resolve(None, model, TABLE, "my-own-model") is model
    assert resolve(None, None, TABLE, "gpt-4o-mini-2024-07-18") is MINI
    assert resolve(None, None, TABLE, "my-own-model") is None
    # an override's rates, and the table's longest answer for the same upstream model unless it states one
    assert resolve(target, model, TABLE, "gpt-4o-mini") == target.model_copy(update={"max_output_tokens": 16384})
    assert resolve(None, model, TABLE, "gpt-4o-mini").max_output_tokens == 16384  # type: ignore[union-attr]
    stated = Price(input_per_million=1, output_per_million=1, max_output_tokens=100)
    assert resolve(stated, None, TABLE, "gpt-4o-mini") is stated


def test_longest_answers_in_the_table() -> None:
    """What budgets reserve for an uncapped request, by upstream model (dated snapshots by family)."""
    longest = {
        "gpt-4o-mini-2024-07-18": 16384, "gpt-4o-2024-08-06": 16384, "gpt-4o-2024-05-13": 4096, "gpt-4.1-nano": 32768,
        "gpt-5-mini": 128000, "claude-sonnet-4-20250514": 64000, "claude-opus-4-1-20250805": 32000,
        "claude-3-5-haiku@20241022": 8192, "gemini-2.5-pro": 65536, "models/gemini-2.5-flash": 65536,
        "gpt-4-32k": None, "text-embedding-3-small": None,  # not known for sure (gpt-4's row would say 8192): the default
    }  # fmt: skip
    for model, tokens in longest.items():
        price = lookup(TABLE, model)
        assert price is not None and price.max_output_tokens == tokens, model


def test_cost_arithmetic() -> None:
    price = Price(input_per_million=3.0, output_per_million=15.0, cached_input_per_million=0.3, cache_write_per_million=3.75)
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=200_000, cached_tokens=500_000, cache_write_tokens=100_000)
    assert cost_usd(price, usage) == pytest.approx(400_000 * 3e-6 + 500_000 * 0.3e-6 + 100_000 * 3.75e-6 + 200_000 * 15e-6)
    plain = Price(input_per_million=2.0, output_per_million=4.0)  # cached tokens at the input rate when no cached rate
    assert cost_usd(plain, Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=4)) == pytest.approx((10 * 2 + 5 * 4) / 1e6)
    assert cost_usd(None, Usage(prompt_tokens=10, completion_tokens=5)) == 0.0


def test_catalog_resolves_prices_at_load() -> None:
    price_1 = {"input_per_million": 1.0, "output_per_million": 1.0}
    price_2 = {"input_per_million": 2.0, "output_per_million": 2.0}
    raw: dict[str, Any] = {
        "providers": {"demo": {"kind": "mock"}, "claude": {"kind": "anthropic", "api_key": "env:HOME"}},
        "models": {
            "table": {"targets": [{"provider": "claude", "model": "claude-sonnet-4-20250514"}]},
            "model-price": {"price": price_2, "targets": [{"provider": "claude", "model": "claude-sonnet-4-20250514"}]},
            "target-price": {"price": price_2, "targets": [{"provider": "demo", "model": "echo", "price": price_1}]},
            "unpriced": {"targets": [{"provider": "demo", "model": "echo"}]},
        },
    }
    catalog = build_catalog(build(raw, "config.toml", Path.cwd()), Pool(1))
    prices = {name: route.deployments[0].price for name, route in catalog.models.items()}
    assert prices == {
        "table": TABLE["claude-sonnet-4"],
        "model-price": Price(**price_2, max_output_tokens=64000),  # the config's rates, the table's longest answer
        "target-price": Price(**price_1),
        "unpriced": None,
    }
    assert catalog.models["table"].deployments[0].base_url == "https://api.anthropic.com"  # the kind's default root


async def test_estimated_stream_usage_is_costed_in_the_closing_chunk() -> None:
    raw = {"providers": {"demo": {"kind": "mock"}}, "models": {"m": {"targets": [{"provider": "demo", "model": "gpt-4o-mini"}]}}}
    deployment = build_catalog(build(raw, "config.toml", Path.cwd()), Pool(1)).models["m"].deployments[0]
    record = Record("rid", "chat", 0.0, 0.0)
    body = {"messages": [{"role": "user", "content": "hello there"}]}
    state = StreamState(include_usage=True, finish_reason="stop", text=["hi ", "you"])
    chunk = orjson.loads((await closing_usage(Operation.CHAT, body, deployment, record)(state))[6:])
    assert record.usage is not None and record.usage.estimated and record.priced
    assert record.cost_usd == cost_usd(MINI, record.usage) > 0
    assert chunk["usage"]["cost_usd"] == record.cost_usd and chunk["choices"] == []


# ---- through a running gateway -----------------------------------------------------------------


def config(upstream_url: str) -> str:
    return f"""
[state]
traces = "sqlite:///traces.db"

{fake_provider(upstream_url)}
[providers.demo]
kind = "mock"

[models."gpt-4o-mini"]
targets = [{{ provider = "fake", model = "gpt-4o-mini-2024-07-18" }}]

[models."demo-priced"]
targets = [{{ provider = "demo", model = "echo" }}]
price = {{ input_per_million = 1.5, output_per_million = 2.5 }}

[models."demo-target-priced"]
targets = [{{ provider = "demo", model = "echo", price = {{ input_per_million = 10.0, output_per_million = 20.0 }} }}]
price = {{ input_per_million = 1.5, output_per_million = 2.5 }}

[models."demo-echo"]
targets = [{{ provider = "demo", model = "echo" }}]
"""


@pytest.fixture(scope="module")
def priced_gateway(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    gw = start_gateway(Path(tmp_path_factory.mktemp("pricing")), config(upstream.base_url))
    yield gw
    gw.stop()


@pytest.fixture
def client(priced_gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=priced_gateway.base_url, api_key=KEYS["alpha"], max_retries=0, timeout=20)


def test_bundled_price_of_a_dated_snapshot(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}])
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens == 3 and usage.completion_tokens == 4
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx((3 * 0.15 + 4 * 0.60) / 1e6, abs=1e-12)
    assert "cost_usd" not in (usage.model_extra or {})  # the provider's bytes are relayed untouched


def test_estimated_usage_is_costed_and_said_so(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(Behavior(usage=False))
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}])
    usage = raw.parse().usage
    assert raw.headers["x-gateway-usage"] == "estimated" and usage is not None
    expected = (usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.60) / 1e6
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected, abs=1e-12)
    assert (usage.model_extra or {})["cost_usd"] == pytest.approx(expected, abs=1e-12)


def test_estimated_stream_usage_carries_its_cost(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(Behavior(usage=False))
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}], stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    expected = (usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.60) / 1e6
    assert (usage.model_extra or {})["cost_usd"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("model", "rates"), [("gpt-4o-mini", (0.15, 0.60)), ("demo-priced", (1.5, 2.5)), ("demo-echo", None)])
def test_a_streams_usage_chunk_carries_its_cost(
    client: openai.OpenAI, fake: FakeOpenAI, model: str, rates: tuple[float, float] | None
) -> None:
    """Provider-reported usage too: the relayed OpenAI usage chunk, and the translated ones, carry
    `cost_usd` when the deployment is priced, as non-streamed answers the gateway writes do."""
    chunks = list(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "a b c"}], stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == [] and not any(c.usage for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)  # the text arrived as it was
    if rates is None:
        assert "cost_usd" not in (usage.model_extra or {})
    else:
        expected = (usage.prompt_tokens * rates[0] + usage.completion_tokens * rates[1]) / 1e6
        assert (usage.model_extra or {})["cost_usd"] == pytest.approx(expected, abs=1e-12) and expected > 0


@pytest.mark.parametrize(("model", "rates"), [("demo-priced", (1.5, 2.5)), ("demo-target-priced", (10.0, 20.0)), ("demo-echo", None)])
def test_configured_prices(client: openai.OpenAI, model: str, rates: tuple[float, float] | None) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "four words right here"}])
    usage = raw.parse().usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (4, 4)  # the mock counts words
    if rates is None:
        assert "x-gateway-cost-usd" not in raw.headers
    else:
        assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx((4 * rates[0] + 4 * rates[1]) / 1e6, abs=1e-12)
