"""Spans reach a real OTLP backend and mean what the GenAI conventions say: Arize Phoenix is started
on loopback, requests go through the gateway, and the spans are read back from Phoenix's REST API.

Phoenix comes from the `otel-test` extra (`./dev test` installs it). Slow: about 30 s, most of it
Phoenix starting. Without Phoenix the test is skipped, except under CI, where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.traces.context import child_span_id
from tests.conftest import GatewayFactory, free_port
from tests.fakes.openai_upstream import FakeOpenAI
from tests.traceutil import client, traces_config, wait_for

pytestmark = pytest.mark.slow


def phoenix_binary() -> str:
    found = os.environ.get("PHOENIX_BIN") or shutil.which("phoenix", path=str(Path(sys.executable).parent)) or shutil.which("phoenix")
    if found:
        return found
    if os.environ.get("CI") == "true":
        raise AssertionError("arize-phoenix is required under CI (the otel-test extra)")
    pytest.skip("arize-phoenix is not installed (pip install -e '.[otel-test]')")


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = phoenix_binary()
    work = tmp_path_factory.mktemp("phoenix")
    port = free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(work),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = (work / "phoenix.log").open("wb")
    process = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise AssertionError(f"phoenix exited: {(work / 'phoenix.log').read_text()[-3000:]}")
            try:
                if httpx.get(url + "/v1/projects", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("phoenix did not start in 180 s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def spans_of(phoenix: str, trace_id: str, expected: int) -> list[dict[str, Any]]:
    def fetch() -> list[dict[str, Any]] | None:
        data = httpx.get(phoenix + "/v1/projects/default/spans", params={"limit": 1000}, timeout=10).json()["data"]
        mine = [s for s in data if s["context"]["trace_id"] == trace_id]
        return mine if len(mine) == expected else None

    return wait_for(fetch, timeout=30, what=f"{expected} spans of trace {trace_id} in Phoenix")


def test_spans_in_phoenix_follow_the_genai_conventions(gateway_factory: GatewayFactory, fake: FakeOpenAI, phoenix: str) -> None:
    gw = gateway_factory(traces_config(fake.base_url, telemetry=f'otlp_endpoint = "{phoenix}"\nservice_name = "gw-under-test"'))
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    client(gw).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello phoenix"}],
        temperature=0.2,
        max_tokens=50,
        extra_headers={"traceparent": f"00-{trace_id}-{parent}-01", "x-request-id": "phx-1"},
    )
    upstream_parent = fake.requests[-1].headers["traceparent"].split("-")[2]
    server, upstream = sorted(spans_of(phoenix, trace_id, 2), key=lambda s: s["parent_id"] != parent)

    assert server["parent_id"] == parent  # the client's traceparent is continued
    assert server["name"] == "chat gpt-4o-mini" and server["status_code"] != "ERROR"
    a = server["attributes"]
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.request.temperature"] == 0.2 and a["gen_ai.request.max_tokens"] == 50
    assert a["gen_ai.response.model"] == "gpt-4o-mini-upstream" and a["gen_ai.response.id"]
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (2, 3)
    assert a["http.response.status_code"] == 200 and a["gateway.request_id"] == "phx-1"
    assert a["gateway.team"] == "alpha" and a["gateway.cache.result"] == "bypass" and a["gateway.policy.version"]
    assert a["gateway.route.target"] == "fake/gpt-4o-mini-upstream"

    assert upstream["parent_id"] == server["context"]["span_id"]
    assert upstream["context"]["span_id"] == upstream_parent == child_span_id(server["context"]["span_id"], 0)
    assert upstream["name"] == "chat gpt-4o-mini-upstream"
    u = upstream["attributes"]
    assert u["gen_ai.provider.name"] == "openai" and u["gen_ai.request.model"] == "gpt-4o-mini-upstream"
    assert u["server.address"] == "127.0.0.1" and u["server.port"] == int(fake.base_url.split(":")[2].split("/")[0])
    assert u["gen_ai.response.id"] == a["gen_ai.response.id"] and u["gen_ai.usage.output_tokens"] == 3
    assert u["gateway.attempt"] == 1 and u["gateway.team"] == "alpha" and "error.type" not in u
    assert orjson.loads(u["gen_ai.input.messages"]) == [{"role": "user", "parts": [{"type": "text", "content": "hello phoenix"}]}]
    output = orjson.loads(u["gen_ai.output.messages"])
    assert output[0]["role"] == "assistant" and output[0]["parts"][0]["content"] == "echo: hello phoenix"

    # a stream, with no traceparent: a new trace, the SERVER span a root
    stream = client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "s t"}], stream=True, extra_headers={"x-request-id": "phx-s"}
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: s t"
    new_trace = fake.requests[-1].headers["traceparent"].split("-")[1]
    streamed = spans_of(phoenix, new_trace, 2)
    root = next(s for s in streamed if s["parent_id"] is None)
    assert root["attributes"]["gateway.stream"] is True and root["attributes"]["gateway.time_to_first_token_s"] > 0
    # the gateway's own error: no upstream attempt, one span marked with the error type
    httpx.post(gw.base_url + "/chat/completions", json={}, headers={"traceparent": f"00-{'b' * 32}-{parent}-01"})
    (alone,) = spans_of(phoenix, "b" * 32, 1)
    assert alone["attributes"]["http.response.status_code"] == 401 and alone["attributes"]["error.type"]
