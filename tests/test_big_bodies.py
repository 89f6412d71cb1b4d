"""One tenant's big request must not stall the worker for the others.

With tpm, a budget or a `max_request_tokens` guardrail, every prompt is counted with tiktoken. A
multi-MB message used to be counted on the event loop (4 MB of one letter: ~2.4 s, during which the
worker answered nothing); now anything over a few KB is counted in a worker thread, in chunks.
The proof is structural: while the big request is in the gateway, the event loop keeps answering
`/healthz` and other teams' small requests promptly, on a live gateway.
"""

from __future__ import annotations

import threading
import time

import httpx

from tests.conftest import GatewayFactory, config_for, sha
from tests.fakes.openai_upstream import FakeOpenAI

KEYS = {"big": "sk-test-big-0123456789abcdef", "small": "sk-test-small-0123456789abcdef"}
POLICY = f"""
[teams.big]
models = ["*"]
tpm = 100000000
budget_usd_per_day = 1000.0

[teams.big.guardrails]
max_request_tokens = 50000000

[teams.small]
models = ["*"]
tpm = 100000000

[[keys]]
name = "big-app"
team = "big"
sha256 = "{sha(KEYS["big"])}"

[[keys]]
name = "small-app"
team = "small"
sha256 = "{sha(KEYS["small"])}"
"""
BOUND_S = 0.3  # generous on a loaded machine: the old code held the loop for seconds


def chat(gw_url: str, who: str, content: str, timeout: float = 60) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    return httpx.post(gw_url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEYS[who]}"}, timeout=timeout)


def test_the_loop_keeps_answering_while_a_big_prompt_is_counted(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url), {"p.toml": POLICY})
    assert chat(gw.url, "small", "warm up: tiktoken's encoding loaded").status_code == 200
    big: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: big.append(chat(gw.url, "big", "a" * 4_000_000)))  # tiktoken's slowest text
    health: list[float] = []
    small: list[float] = []
    with httpx.Client(timeout=30) as client:
        sender.start()
        while sender.is_alive():
            started = time.perf_counter()
            assert client.get(gw.url + "/healthz").status_code == 200
            health.append(time.perf_counter() - started)
            if len(health) % 5 == 0:
                started = time.perf_counter()
                assert chat(gw.url, "small", "hi").status_code == 200
                small.append(time.perf_counter() - started)
            time.sleep(0.01)
        sender.join()
    assert big[0].status_code == 200, big[0].text
    assert max(health) < BOUND_S, f"/healthz waited {max(health):.3f} s behind the big request ({len(health)} probes)"
    assert len(health) >= 10, "the big request was too quick to overlap: nothing was proven"
    assert max(small) < BOUND_S, f"a small request waited {max(small):.3f} s behind the big request"


def test_a_long_run_of_whitespace_is_counted_not_a_500(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    """tiktoken's pre-tokenizer gives up on a long run of whitespace (its regex runs out of
    backtracking stack): the gateway counted the request into an unhandled error."""
    gw = gateway_factory(config_for(fake.base_url), {"p.toml": POLICY})
    answer = chat(gw.url, "big", "x" + " " * 2_000_000 + "y")
    assert answer.status_code == 200, answer.text
