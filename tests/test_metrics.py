"""`/metrics`: Prometheus text with closed label sets, right with one worker or several."""

from __future__ import annotations

import threading

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.metrics import DURATION_BUCKETS, OVERHEAD_BUCKETS, TTFT_BUCKETS, Metrics
from gateway.pipeline.record import Record
from gateway.providers.base import Usage
from tests.conftest import KEYS, GatewayFactory
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.traceutil import client, metrics, parse_metrics, traces_config, value, wait_for

PRICED = """
[models."gpt-priced"]
targets = [{ provider = "fake", model = "gpt-4o-mini-upstream" }]
price = { input_per_million = 1000000.0, output_per_million = 2000000.0 }

[providers.slowdemo]
kind = "mock"
chunks = 6
chunk_delay_ms = 150

[models."slow-echo"]
targets = [{ provider = "slowdemo", model = "echo" }]
"""


def test_requests_latency_tokens_cost_errors_and_closed_labels(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(traces_config(fake.base_url, extra=PRICED))
    for _ in range(2):
        reply = client(gw).chat.completions.create(model="gpt-priced", messages=[{"role": "user", "content": "one two"}])
        assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 3)
    list(client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "s"}], stream=True))
    fake.script(*[Behavior(status=500)] * 6)
    http = httpx.Client(base_url=gw.base_url, headers={"authorization": f"Bearer {KEYS['alpha']}"}, timeout=10)
    assert http.post("/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}).status_code == 502
    fake.reset()
    assert http.post("/chat/completions", json={"model": "nope-model", "messages": [{"role": "user", "content": "x"}]}).status_code == 404
    m = wait_for(lambda: (m := metrics(gw)) and value(m, "gateway_trace_records_written_total") == 5 and m, what="5 records")
    assert value(m, "gateway_requests_total", model="gpt-priced", status="200") == 2
    assert value(m, "gateway_requests_total", model="gpt-4o-mini", status="502") == 1
    assert value(m, "gateway_requests_total", model="other", status="404") == 1
    assert value(m, "gateway_tokens_total", model="gpt-priced", type="input") == 4
    assert value(m, "gateway_tokens_total", model="gpt-priced", type="output") == 6
    assert value(m, "gateway_cost_usd_total", model="gpt-priced") == 2 * (2 * 1.0 + 3 * 2.0)
    assert value(m, "gateway_upstream_errors_total", provider="fake", error_type="upstream_server_error") >= 1
    assert value(m, "gateway_cache_results_total", result="bypass") >= 4
    assert {ls for (n, ls) in m if n == "gateway_rate_limit_rejections_total"} == {
        frozenset({("reason", r)}) for r in ("rpm", "tpm", "concurrency", "budget")
    }
    assert value(m, "gateway_trace_records_dropped_total") == 0 and value(m, "gateway_in_flight_requests") == 0
    duration_bounds = {dict(ls)["le"] for (n, ls) in m if n == "gateway_request_duration_seconds_bucket"}
    assert duration_bounds == {repr(float(b)) for b in DURATION_BUCKETS} | {"+Inf"}
    ttft_bounds = {dict(ls)["le"] for (n, ls) in m if n == "gateway_time_to_first_token_seconds_bucket"}
    assert ttft_bounds == {repr(float(b)) for b in TTFT_BUCKETS} | {"+Inf"}
    assert value(m, "gateway_time_to_first_token_seconds_count", model="gpt-4o-mini") == 1  # the stream
    assert value(m, "gateway_request_duration_seconds_count") == 5
    text = httpx.get(gw.url + "/metrics").text
    for private in ("nope-model", "alpha-app", "alpha", KEYS["alpha"]):
        assert f'"{private}"' not in text  # unknown models collapse into "other"; no key, team or user labels


def test_overhead_metric_is_the_header_figure_and_in_flight_counts(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(traces_config(fake.base_url, extra=PRICED))
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    header_s = float(raw.headers["x-gateway-overhead-ms"]) / 1000
    m = metrics(gw)
    assert value(m, "gateway_overhead_seconds_count") == 1
    assert abs(value(m, "gateway_overhead_seconds_sum") - header_s) < 1e-12
    opened = threading.Event()

    def stream() -> None:
        chunks = client(gw).chat.completions.create(model="slow-echo", messages=[{"role": "user", "content": "a b c d"}], stream=True)
        for _ in chunks:
            opened.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert opened.wait(10)
    assert value(metrics(gw), "gateway_in_flight_requests") == 1
    thread.join(20)
    assert value(metrics(gw), "gateway_in_flight_requests") == 0


def test_metrics_are_whole_with_several_workers(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(traces_config(fake.base_url), args=("--workers", "2"))
    for i in range(40):
        httpx.post(
            gw.base_url + "/chat/completions",
            json={"model": "demo-echo", "messages": [{"role": "user", "content": f"w{i}"}]},
            headers={"authorization": f"Bearer {KEYS['alpha']}"},
        ).raise_for_status()
    wait_for(lambda: value(metrics(gw), "gateway_trace_records_written_total") == 40, what="40 records from both workers")
    for _ in range(10):  # whichever worker answers, the totals are the same
        m = metrics(gw)
        assert value(m, "gateway_requests_total", model="demo-echo", status="200") == 40
        assert value(m, "gateway_request_duration_seconds_count", model="demo-echo") == 40
        assert value(m, "gateway_trace_records_written_total") == 40
        assert value(m, "gateway_in_flight_requests") == 0
    assert gw.stop() == 0
    assert gw.log().count("trace writer done: 40 records received, 40 written") == 1  # one writer for both workers


def _seconds(bounds: tuple[float, ...], top: float) -> st.SearchStrategy[float]:
    return st.one_of(st.floats(0, top, allow_nan=False), st.sampled_from(bounds))  # a bucket's bound itself included


_RECORDS = st.lists(
    st.tuples(
        st.sampled_from(["m", "n", "unknown-model"]),
        st.sampled_from([200, 429, 502]),
        st.sampled_from(["hit", "miss", "bypass"]),
        _seconds(DURATION_BUCKETS, 100),
        st.one_of(st.none(), _seconds(TTFT_BUCKETS, 12)),
        _seconds(OVERHEAD_BUCKETS, 0.2),
        st.one_of(st.none(), st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))),
        st.floats(0, 5, allow_nan=False),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(_RECORDS, st.integers(0, 30))
def test_tallied_metrics_expose_what_observing_each_request_would(rows: list[tuple], scrape_at: int) -> None:  # type: ignore[type-arg]
    """Requests are tallied and added to the instruments in steps: after any scrapes in between, the
    exposition has each request in exactly the buckets, counts and sums it would have on its own."""
    m = Metrics(frozenset({"m", "n"}))
    for i, (model, status, cache, duration, ttft, overhead, usage, cost) in enumerate(rows):
        if i == scrape_at:
            m.render()
        r = Record(f"r{i}", "chat", 0.0, 0.0, model=model, status=status, cache=cache, duration_s=duration, ttft_s=ttft)
        r.overhead_s, r.cost_usd = overhead, cost
        r.usage = Usage(*usage) if usage else None
        m.observe(r)
    got = parse_metrics(m.render().decode())
    labels = {"m": "m", "n": "n", "unknown-model": "other"}
    for label in ("m", "n", "other"):
        mine = [row for row in rows if labels[row[0]] == label]
        for status in (200, 429, 502):
            n = sum(1 for row in mine if row[1] == status)
            assert value(got, "gateway_requests_total", model=label, status=str(status)) == n
        for cache in ("hit", "miss", "bypass"):
            assert value(got, "gateway_cache_results_total", model=label, result=cache) == sum(1 for row in mine if row[2] == cache)
        for name, index, bounds in (
            ("gateway_request_duration_seconds", 3, DURATION_BUCKETS),
            ("gateway_time_to_first_token_seconds", 4, TTFT_BUCKETS),
        ):
            seen = [row[index] for row in mine if row[index] is not None]
            for bound in bounds:
                assert value(got, name + "_bucket", model=label, le=repr(float(bound))) == sum(1 for v in seen if v <= bound)
            assert value(got, name + "_count", model=label) == len(seen)
            assert value(got, name + "_sum", model=label) == pytest.approx(sum(seen), rel=1e-9, abs=1e-9)
        for kind, index in (("input", 0), ("output", 1), ("cached_input", 2)):
            assert value(got, "gateway_tokens_total", model=label, type=kind) == sum(row[6][index] for row in mine if row[6])
        assert value(got, "gateway_cost_usd_total", model=label) == pytest.approx(sum(row[7] for row in mine), rel=1e-9, abs=1e-9)
    for bound in OVERHEAD_BUCKETS:
        assert value(got, "gateway_overhead_seconds_bucket", le=repr(float(bound))) == sum(1 for row in rows if row[5] <= bound)
    assert value(got, "gateway_overhead_seconds_count") == len(rows)
