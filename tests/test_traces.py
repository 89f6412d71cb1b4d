"""Every request leaves one trace record: written off the hot path by the trace writer process,
queryable over the admin API and the CLI, complete enough to become an evaluation dataset."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.traces import capture, context, otlp, spans, writer
from gateway.traces.cli import dataset_row, sample
from tests.conftest import DEFAULT_POLICY, KEYS, UPSTREAM_KEY, GatewayFactory, GatewayProcess, free_port, sha
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.otlp_receiver import Receiver
from tests.traceutil import admin_get, client, metrics, trace, traces_config, value, wait_for

# units ---------------------------------------------------------------------------------------


def test_traceparent_parsing() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert context.parse(good) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01")
    for bad in [
        None,
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    ]:
        assert context.parse(bad) is None, bad
    ids = {context.child_span_id("b7ad6b7169203331", i) for i in range(5)}
    assert len(ids) == 5 and "b7ad6b7169203331" not in ids and all(len(i) == 16 for i in ids)


def test_otlp_encoding_decodes_with_the_official_classes() -> None:
    server = otlp.Span("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", None, "chat m", otlp.SERVER, 10**18, 10**18 + 5)
    server.attributes = {"s": "é" * 200, "i": 7, "neg": -3, "f": 0.5, "b": True, "arr": ["stop", "length"], "none": None}
    client_span = otlp.Span(server.trace_id, "00f067aa0ba902b7", server.span_id, "chat up", otlp.CLIENT, 10**18 + 1, 10**18 + 4)
    client_span.error = "upstream_server_error"
    raw = otlp.export_request({"service.name": "svc"}, "llm-gateway", "1.0", [server, client_span])
    message = ExportTraceServiceRequest.FromString(raw)
    rs = message.resource_spans[0]
    assert rs.resource.attributes[0].key == "service.name" and rs.resource.attributes[0].value.string_value == "svc"
    assert rs.scope_spans[0].scope.name == "llm-gateway"
    first, second = rs.scope_spans[0].spans
    assert first.trace_id.hex() == server.trace_id and first.span_id.hex() == server.span_id and not first.parent_span_id
    assert first.kind == 2 and second.kind == 3 and second.parent_span_id.hex() == server.span_id
    assert (first.start_time_unix_nano, first.end_time_unix_nano) == (10**18, 10**18 + 5)
    attrs = {kv.key: kv.value for kv in first.attributes}
    assert set(attrs) == {"s", "i", "neg", "f", "b", "arr"}
    assert attrs["s"].string_value == "é" * 200 and attrs["i"].int_value == 7 and attrs["neg"].int_value == -3
    assert attrs["f"].double_value == 0.5 and attrs["b"].bool_value is True
    assert [v.string_value for v in attrs["arr"].array_value.values] == ["stop", "length"]
    assert second.status.code == 2 and second.status.message == "upstream_server_error" and first.status.code == 0


def test_spans_of_a_retried_request() -> None:
    entry = {
        "request_id": "r", "trace_id": "a" * 32, "span_id": "b" * 16, "parent_span_id": None, "operation": "chat",
        "started_at": 1000.0, "duration_s": 0.5, "model": "gpt", "target": "p2/up-b", "status": 200, "team": "t",
        "finish_reason": "stop", "response_id": "resp-1", "response_model": "up-b-2025", "capture": "full",
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "cached_tokens": 0},
        "request_body": {"temperature": 0.1},  # as the sink sends it when the text is there
        "request_json": '{"model": "gpt", "messages": [{"role": "user", "content": "hi sk-abcdefghijklmnopqrstuvwx"}], "temperature": 0.1}',
        "response_json": '{"choices": [{"message": {"role": "assistant", "content": "yo"}, "finish_reason": "stop"}]}',
        "attempts": [
            {"target": "p1/up-a", "model": "gpt", "started_s": 0.01, "latency_s": 0.1, "status": 502, "error_type": "upstream_server_error",
             "server_address": "10.0.0.1:8443"},
            {"target": "p2/up-b", "model": "gpt", "started_s": 0.2, "latency_s": 0.25, "status": 200, "error_type": None,
             "server_address": None},
        ],
    }  # fmt: skip
    built = spans.build(entry, {"p1": ("openai", "a.example:443"), "p2": ("anthropic", "b.example:443")}, 4096)
    message = ExportTraceServiceRequest.FromString(otlp.export_request({"service.name": "s"}, "x", "1", built))
    server, first, second = message.resource_spans[0].scope_spans[0].spans
    attrs = [{kv.key: kv.value for kv in s.attributes} for s in (server, first, second)]
    assert [s.name for s in (server, first, second)] == ["chat gpt", "chat up-a", "chat up-b"]
    assert first.parent_span_id == second.parent_span_id == server.span_id and first.span_id != second.span_id
    assert first.span_id.hex() == context.child_span_id("b" * 16, 0) and second.span_id.hex() == context.child_span_id("b" * 16, 1)
    assert first.start_time_unix_nano == int(1000.01 * 1e9) and second.end_time_unix_nano == int(1000.2 * 1e9) + int(0.25 * 1e9)
    assert first.status.code == 2 and attrs[1]["error.type"].string_value == "upstream_server_error"
    assert attrs[1]["server.address"].string_value == "10.0.0.1" and attrs[1]["server.port"].int_value == 8443
    assert attrs[1]["gen_ai.provider.name"].string_value == "openai" and "gen_ai.response.id" not in attrs[1]
    assert attrs[2]["gen_ai.provider.name"].string_value == "anthropic" and attrs[2]["server.address"].string_value == "b.example"
    assert attrs[2]["gen_ai.response.id"].string_value == "resp-1" and attrs[2]["gateway.attempt"].int_value == 2
    assert "sk-abcdefghijklmnopqrstuvwx" not in attrs[2]["gen_ai.input.messages"].string_value
    assert "hi [REDACTED]" in attrs[2]["gen_ai.input.messages"].string_value  # read from the request's text
    assert '"content":"yo"' in attrs[2]["gen_ai.output.messages"].string_value
    assert attrs[0]["gen_ai.request.temperature"].double_value == 0.1 and attrs[0]["gen_ai.usage.output_tokens"].int_value == 4
    assert server.status.code == 0 and "gen_ai.input.messages" not in attrs[0]


def test_redaction_and_truncation() -> None:
    secrets = [
        "sk-proj-abcdefghijklmnop1234",
        "AKIAABCDEFGHIJKLMNOP",
        "ghp_" + "a" * 36,
        "xoxb-1234567890-abcdef",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ]
    body = {"messages": [{"role": "user", "content": f"use {s} please"} for s in secrets]}
    body["messages"].append({"role": "user", "content": 'config: {"api_key": "hunter2hunter2"} and password=opensesame'})
    text = capture.to_json(body, 1 << 20)
    for s in [*secrets, "hunter2hunter2", "opensesame"]:
        assert s not in text
    assert text.count(capture.REDACTED) == len(secrets) + 2
    assert orjson.loads(text)["messages"][0]["content"] == f"use {capture.REDACTED} please"
    assert capture.redact("skiing is fun; 5 tokens") == "skiing is fun; 5 tokens"
    big = capture.to_json({"messages": [{"role": "user", "content": "x" * 5000}]}, 1000)
    marker = orjson.loads(big)  # still valid JSON
    assert marker["truncated"] is True and marker["bytes"] > 5000 and "[truncated" in marker["text"] and len(big) < 1200


def test_sample_is_uniform_reproducible_and_in_order() -> None:
    rows = [{"i": i} for i in range(1000)]
    a, b = sample(rows, 50, seed=7), sample(rows, 50, seed=7)
    assert a == b and len(a) == 50 and [r["i"] for r in a] == sorted(r["i"] for r in a)
    assert sample(rows, 50, seed=8) != a
    assert len(sample(rows[:10], 50, seed=1)) == 10


# through a running gateway --------------------------------------------------------------------


def test_a_record_has_every_spec_field_and_never_a_key(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(traces_config(fake.base_url))
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello trace"}],
        temperature=0.2,
        max_tokens=50,
        extra_headers={"traceparent": parent, "x-request-id": "req-trace-1"},
    )
    sent_up = fake.requests[-1].headers["traceparent"].split("-")
    t = trace(gw, "req-trace-1")
    assert t["trace_id"] == "0af7651916cd43dd8448eb211c80319c" == sent_up[1]
    assert t["parent_span_id"] == "b7ad6b7169203331"
    assert sent_up[2] == context.child_span_id(t["span_id"], 0) != "b7ad6b7169203331"  # the attempt's CLIENT span
    assert (t["key_name"], t["team"], t["model"], t["target"]) == ("alpha-app", "alpha", "gpt-4o-mini", "fake/gpt-4o-mini-upstream")
    assert t["status"] == 200 and t["error_type"] is None and t["finish_reason"] == "stop" and t["operation"] == "chat"
    assert t["input_tokens"] == 2 and t["output_tokens"] == 3 and t["cached_tokens"] == 0 and t["cost_usd"] is not None
    assert t["duration_ms"] > 0 and t["upstream_ms"] > 0 and t["started_at"].endswith("Z")
    assert t["overhead_ms"] == float(raw.headers["x-gateway-overhead-ms"])
    assert t["policy_version"] and t["cache"] == "bypass" and t["response_id"] and t["response_model"]
    assert [(a["target"], a["status"]) for a in t["attempts"]] == [("fake/gpt-4o-mini-upstream", 200)]
    assert t["attempts"][0]["latency_ms"] > 0 and t["attempts"][0]["server_address"].startswith("127.0.0.1:")
    assert t["params"] == {"temperature": 0.2, "max_tokens": 50}
    assert t["capture"] == "full" and t["request"]["messages"] == [{"role": "user", "content": "hello trace"}]
    assert t["response"]["choices"][0]["message"]["content"] == "echo: hello trace"
    assert set(t) >= {"prompt_id", "prompt_version", "prompt_label", "prompt_hash", "ttft_ms", "usage_estimated", "priced"}
    gw.stop()  # flushes; then nothing on disk may hold a key
    for path in gw.directory.glob("traces.db*"):
        data = path.read_bytes()
        assert KEYS["alpha"].encode() not in data and UPSTREAM_KEY.encode() not in data


def test_failures_and_streams_are_recorded_too(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(traces_config(fake.base_url))
    http = httpx.Client(base_url=gw.url, timeout=10)
    assert http.post("/v1/chat/completions", content=b"{", headers={"x-request-id": "bad-json"}).status_code == 401
    headers = {"authorization": f"Bearer {KEYS['alpha']}"}
    assert http.post("/v1/chat/completions", content=b"{", headers={**headers, "x-request-id": "bad-json-2"}).status_code == 400
    fake.script(Behavior(status=500), Behavior(status=500), Behavior(status=500), Behavior(status=500))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    assert http.post("/v1/chat/completions", json=body, headers={**headers, "x-request-id": "up-500"}).status_code == 502
    fake.reset()  # whatever 500s the retries left unused
    stream = client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c"}], stream=True, extra_headers={"x-request-id": "s-1"}
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: a b c"
    assert trace(gw, "bad-json")["status"] == 401 and trace(gw, "bad-json")["key_name"] is None
    assert trace(gw, "bad-json-2")["error_type"] == "invalid_json"
    failed = trace(gw, "up-500")
    assert failed["status"] == 502 and failed["attempts"] and all(a["error_type"] == "upstream_server_error" for a in failed["attempts"])
    streamed = trace(gw, "s-1")
    assert streamed["stream"] is True and streamed["ttft_ms"] > 0 and streamed["output_tokens"] == 4
    assert streamed["response"] == {"role": "assistant", "content": "echo: a b c", "finish_reason": "stop"}


CAPTURE_POLICY = DEFAULT_POLICY.replace(
    '[teams.beta]\nmodels = ["demo-echo"]', '[teams.beta]\nmodels = ["demo-echo"]\ncapture_content = "full"'
)


def test_capture_modes_and_the_per_team_override(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    assert CAPTURE_POLICY != DEFAULT_POLICY
    for mode in ("none", "metadata"):
        gw = gateway_factory(traces_config(fake.base_url, telemetry=f'capture_content = "{mode}"'), {"p.toml": CAPTURE_POLICY})
        secret_text = "my private words"
        client(gw).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": secret_text}],
            temperature=0.7,
            extra_headers={"x-request-id": f"cap-{mode}"},
        )
        client(gw, KEYS["beta"]).chat.completions.create(
            model="demo-echo", messages=[{"role": "user", "content": "beta words"}], extra_headers={"x-request-id": f"beta-{mode}"}
        )
        t = trace(gw, f"cap-{mode}")
        assert t["capture"] == mode and t["response"] is None and t["params"] == {"temperature": 0.7}
        if mode == "none":
            assert t["request"] is None
        else:
            assert t["request"]["messages"] == [{"role": "system", "chars": 8}, {"role": "user", "chars": len(secret_text)}]
        beta = trace(gw, f"beta-{mode}")  # the beta team overrides the global mode
        assert beta["capture"] == "full" and beta["request"]["messages"][0]["content"] == "beta words"
        gw.stop()
        assert secret_text.encode() not in b"".join(p.read_bytes() for p in gw.directory.glob("traces.db*"))


def test_bodies_over_the_limit_are_truncated_with_a_marker(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(traces_config(fake.base_url, telemetry="max_captured_bytes = 1024"))
    client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "word " * 2000}], extra_headers={"x-request-id": "big"}
    )
    t = trace(gw, "big")
    assert t["request"]["truncated"] is True and t["request"]["bytes"] > 10000 and len(t["request"]["text"]) < 1100
    assert t["response"]["truncated"] is True


def test_admin_filters_and_cursor_pagination(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(traces_config(fake.base_url))
    before = time.time()
    for i in range(7):
        client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"m{i}"}])
    for i in range(3):
        client(gw, KEYS["beta"]).chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": f"b{i}"}])
    denied = httpx.post(
        gw.base_url + "/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {KEYS['beta']}"},
    )  # fmt: skip
    assert denied.status_code == 403
    wait_for(lambda: len(admin_get(gw, "/admin/traces", limit=100).json()["data"]) == 11, what="11 traces")
    seen: list[str] = []
    cursor = None
    while True:
        page = admin_get(gw, "/admin/traces", limit=3, **({"cursor": cursor} if cursor else {})).json()
        seen += [t["request_id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 11
    newest = admin_get(gw, "/admin/traces", limit=11).json()["data"]
    assert [t["request_id"] for t in newest] == seen  # newest first, pages in order
    assert {t["team"] for t in admin_get(gw, "/admin/traces", team="beta").json()["data"]} == {"beta"}
    assert len(admin_get(gw, "/admin/traces", team="beta").json()["data"]) == 4
    assert len(admin_get(gw, "/admin/traces", model="demo-echo").json()["data"]) == 3
    assert [t["status"] for t in admin_get(gw, "/admin/traces", status="4xx").json()["data"]] == [403]
    assert len(admin_get(gw, "/admin/traces", status="200").json()["data"]) == 10
    assert len(admin_get(gw, "/admin/traces", cache="bypass", since=str(before)).json()["data"]) == 11
    assert admin_get(gw, "/admin/traces", until="2001-01-01T00:00:00Z").json()["data"] == []
    assert admin_get(gw, "/admin/traces", since="yesterday").status_code == 400
    assert admin_get(gw, "/admin/traces", status="weird").status_code == 400
    assert admin_get(gw, "/admin/traces/nope").status_code == 404
    oldest, cursor = [], None  # oldest first, in pages of 4
    while True:
        page = admin_get(gw, "/admin/traces", order="asc", limit=4, **({"cursor": cursor} if cursor else {})).json()
        oldest += [t["request_id"] for t in page["data"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert oldest == seen[::-1]
    assert admin_get(gw, "/admin/traces", order="sideways").status_code == 400
    as_user = httpx.get(gw.url + "/admin/traces", headers={"authorization": f"Bearer {KEYS['alpha']}"})
    assert as_user.status_code == 403


def _api_cli(gw: GatewayProcess, *args: str, key: str = KEYS["admin"]) -> subprocess.CompletedProcess[str]:
    """The same commands against the gateway's admin API, in pages of 2 rows."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "traces", *args, "--url", gw.url, "--key", key, "--page-size", "2"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _cli(gw_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "traces", *args, "--config", str(gw_dir / "config.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_cli_export_and_tail_while_the_gateway_runs(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(traces_config(fake.base_url))
    tail = subprocess.Popen(
        [sys.executable, "-m", "gateway", "traces", "tail", "--config", str(gw.directory / "config.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    remote_tail = subprocess.Popen(
        [sys.executable, "-m", "gateway", "traces", "tail", "--url", gw.url, "--key", KEYS["admin"], "--page-size", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        for i in range(6):
            client(gw).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"question {i}"}], extra_headers={"x-request-id": f"cli-{i}"}
            )
        client(gw, KEYS["beta"]).chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "beta q"}])
        wait_for(lambda: len(admin_get(gw, "/admin/traces").json()["data"]) == 7, what="7 traces")
        out = _cli(gw.directory, "export")
        assert out.returncode == 0, out.stderr
        rows = [orjson.loads(line) for line in out.stdout.splitlines()]
        assert [r["request_id"] for r in rows[:6]] == [f"cli-{i}" for i in range(6)]  # oldest first
        first = rows[0]
        assert first["input"] == [{"role": "user", "content": "question 0"}]
        assert first["output"] == {"role": "assistant", "content": "echo: question 0", "finish_reason": "stop", "refusal": None} or (
            first["output"]["content"] == "echo: question 0" and first["output"]["role"] == "assistant"
        )
        assert first["model"] == "gpt-4o-mini" and first["usage"]["input_tokens"] == 2 and first["latency_ms"] > 0
        assert first["tags"]["team"] == "alpha" and "cost_usd" in first and "prompt" in first
        assert len(_cli(gw.directory, "export", "--team", "beta").stdout.splitlines()) == 1
        assert len(_cli(gw.directory, "export", "--model", "gpt-4o-mini").stdout.splitlines()) == 6
        assert _cli(gw.directory, "export", "--until", "2001-01-01").stdout == ""
        assert len(_cli(gw.directory, "export", "--since", "2001-01-01T00:00:00Z").stdout.splitlines()) == 7
        sampled = _cli(gw.directory, "export", "--sample", "3", "--seed", "42").stdout
        assert len(sampled.splitlines()) == 3 and sampled == _cli(gw.directory, "export", "--sample", "3", "--seed", "42").stdout
        bad = _cli(gw.directory, "export", "--since", "not-a-time")
        assert bad.returncode == 1 and "not an ISO 8601" in bad.stderr
        for args in [
            ("export",),
            ("export", "--team", "beta"),
            ("export", "--since", "2001-01-01"),
            ("export", "--sample", "3", "--seed", "42"),
        ]:
            remote = _api_cli(gw, *args)  # the admin API gives the same rows as the store file
            assert remote.returncode == 0 and remote.stdout == _cli(gw.directory, *args).stdout, (args, remote.stderr)
        bad = _api_cli(gw, "export", "--since", "not-a-time")
        assert bad.returncode == 1 and "HTTP 400" in bad.stderr and "not an ISO 8601" in bad.stderr
        refused = _api_cli(gw, "export", key=KEYS["alpha"])
        assert refused.returncode == 1 and "HTTP 403" in refused.stderr and refused.stdout == ""
        unreachable = subprocess.run(
            [sys.executable, "-m", "gateway", "traces", "export", "--url", f"http://127.0.0.1:{free_port()}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert unreachable.returncode == 1 and "cannot reach the gateway" in unreachable.stderr
        client(gw).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "late"}], extra_headers={"x-request-id": "tail-me"}
        )
        for follower in (tail, remote_tail):
            lines: list[str] = []
            reader = threading.Thread(target=lambda f=follower, out=lines: [out.append(line) for line in f.stdout or []], daemon=True)
            reader.start()
            wait_for(lambda out=lines: any("tail-me" in line for line in out), what="the tail to show the new request")
            assert any(" 200  chat gpt-4o-mini -> fake/gpt-4o-mini-upstream" in line and "team=alpha" in line for line in lines)
            assert sum("cli-" in line for line in lines) == 6 and len(set(lines)) == len(lines)  # each request once
    finally:
        for follower in (tail, remote_tail):
            follower.send_signal(signal.SIGINT)
            follower.wait(10)


def test_max_rows_is_enforced_while_running(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(traces_config(fake.base_url, state="trace_max_rows = 10"))
    for i in range(25):
        client(gw).chat.completions.create(
            model="demo-echo", messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": f"n{i}"}
        )
    wait_for(lambda: value(metrics(gw), "gateway_trace_records_written_total") == 25, what="25 written")
    data = wait_for(lambda: (d := admin_get(gw, "/admin/traces", limit=100).json()["data"]) and len(d) == 10 and d, what="10 rows")
    assert [t["request_id"] for t in data] == [f"n{i}" for i in range(24, 14, -1)]


async def _load(url: str, ids: list[str], answered: list[str], concurrency: int = 16) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        queue = list(ids)

        async def worker() -> None:
            while queue:
                rid = queue.pop()
                stream = int(rid.split("-")[1]) % 3 == 0
                body = {"model": "demo-echo", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                try:
                    response = await http.post(
                        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEYS['alpha']}", "x-request-id": rid}
                    )
                except httpx.HTTPError:
                    continue
                answered.append(rid)
                assert response.status_code in (200, 503), response.text

        await asyncio.gather(*(worker() for _ in range(concurrency)))


SLOW_MOCK = """
[providers.slowmock]
kind = "mock"
chunks = 5
chunk_delay_ms = 20
delay_ms = 20
"""


def test_sigterm_under_load_loses_no_record(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    config = traces_config(fake.base_url).replace(
        'targets = [{ provider = "demo", model = "echo" }]', 'targets = [{ provider = "slowmock", model = "echo" }]'
    )
    gw = gateway_factory(config + SLOW_MOCK)
    ids = [f"load-{i}" for i in range(3000)]
    answered: list[str] = []
    loader = threading.Thread(target=lambda: asyncio.run(_load(gw.url, ids, answered)))
    loader.start()
    wait_for(lambda: len(answered) >= 100, what="some load")
    assert gw.stop() == 0
    loader.join(60)
    assert 100 <= len(answered) < len(ids)
    conn = sqlite3.connect(gw.directory / "traces.db")
    recorded = [r[0] for r in conn.execute("SELECT request_id FROM traces")]
    assert len(recorded) == len(set(recorded))
    assert set(answered) <= set(recorded), set(answered) - set(recorded)
    assert "trace writer done" in gw.log() and "dropped {'queue_full': 0, 'store_error': 0, 'invalid_record': 0}" in gw.log()


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Any:
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        try:
            _sh("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point))
        except (OSError, subprocess.CalledProcessError) as exc:
            if os.environ.get("CI") == "true":
                raise AssertionError(f"this test needs to mount a tmpfs (root) under CI: {exc}") from None
            pytest.skip(f"cannot mount a tmpfs here: {exc}")
        mounted.append(point)
        return point

    mount.mounted = mounted  # type: ignore[attr-defined]
    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def _accounted(gw: GatewayProcess, sent: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    def check() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        m = metrics(gw)
        return m if value(m, "gateway_trace_records_written_total") + value(m, "gateway_trace_records_dropped_total") == sent else None

    return wait_for(check, what=f"{sent} records accounted for")


def test_a_read_only_or_full_store_drops_counted_records_and_requests_succeed(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, mount_tmpfs: Any
) -> None:
    # read-only: the store file is a bind mount of a file on a read-only tmpfs (root writes anything else)
    readonly = mount_tmpfs("ro-source", "size=1m")
    (readonly / "traces.db").touch()
    _sh("mount", "-o", "remount,ro", str(readonly))
    store_dir = readonly.parent / "store"
    store_dir.mkdir()
    (store_dir / "traces.db").touch()
    _sh("mount", "--bind", str(readonly / "traces.db"), str(store_dir / "traces.db"))
    mount_tmpfs.mounted.append(store_dir / "traces.db")
    full = mount_tmpfs("full", "size=256k")
    for kind, place, size in (("read-only", store_dir, 10), ("full", full, 20_000)):
        gw = gateway_factory(traces_config(fake.base_url).replace('"sqlite:///traces.db"', f'"sqlite:///{place}/traces.db"'))
        for _ in range(40):  # full: 40 x 20 kB of captured text into 256 kB
            reply = client(gw).chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "z" * size}])
            assert reply.choices[0].message.content
        m = _accounted(gw, 40)
        dropped = value(m, "gateway_trace_records_dropped_total", reason="store_error")
        if kind == "read-only":
            assert dropped == 40, kind
        else:
            assert 0 < dropped < 40 and value(m, "gateway_trace_records_written_total") > 0, kind
        assert "trace store" in gw.log() and "failed" in gw.log()
        gw.stop()


def test_burst_of_5000_records_and_spans_are_accounted_exactly(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    with Receiver(delay_s=1.0) as receiver:  # slower than the burst: the span queue overflows
        config = traces_config(fake.base_url, state="trace_queue_size = 300", telemetry=f'otlp_endpoint = "{receiver.url}"')
        gw = gateway_factory(config, {"p.toml": DEFAULT_POLICY.replace(sha(KEYS["alpha"]), sha(KEYS["alpha"]))})
        ids = [f"burst-{i}" for i in range(5000)]
        answered: list[str] = []
        asyncio.run(_load(gw.url, ids, answered, concurrency=64))
        assert len(answered) == 5000

        def settled() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            m = metrics(gw)
            records = value(m, "gateway_trace_records_written_total") + value(m, "gateway_trace_records_dropped_total")
            spans = value(m, "gateway_trace_spans_exported_total") + value(m, "gateway_trace_spans_dropped_total")
            return m if records == 5000 and spans == 10000 else None

        m = wait_for(settled, timeout=60, what="5000 records and 10000 spans accounted for")
        assert value(m, "gateway_trace_spans_exported_total") == receiver.count()
        assert value(m, "gateway_trace_spans_dropped_total", reason="queue_full") > 0  # the drop path was taken, and counted
        conn = sqlite3.connect(gw.directory / "traces.db")
        assert conn.execute("SELECT count(*) FROM traces").fetchone()[0] == value(m, "gateway_trace_records_written_total")
        assert receiver.count() > 0


def test_dataset_row_shapes() -> None:
    base = {
        "request_id": "r", "trace_id": "t", "started_at": "2025-01-01T00:00:00.000Z", "model": "m", "target": "p/m",
        "operation": "text_completion", "params": {"temperature": 0}, "input_tokens": 1, "output_tokens": 2, "cached_tokens": 0,
        "cost_usd": 0.1, "duration_ms": 5.0, "ttft_ms": None, "status": 200, "finish_reason": "stop", "team": "a", "key_name": "k",
        "stream": False, "cache": "miss", "policy_version": "v", "route_rule": None, "error_type": None, "capture": "full",
        "prompt_id": "bot", "prompt_version": 2, "prompt_label": "production", "prompt_hash": "h",
        "request": {"model": "m", "prompt": "say hi"}, "response": {"choices": [{"text": "hi", "finish_reason": "stop"}]},
    }  # fmt: skip
    row = dataset_row(base)
    assert row["input"] == [{"role": "user", "content": "say hi"}]
    assert row["output"] == {"role": "assistant", "content": "hi", "finish_reason": "stop"}
    assert row["prompt"] == {"id": "bot", "version": 2, "label": "production", "hash": "h"}
    assert dataset_row({**base, "capture": "metadata"})["input"] is None


def _writers(gw: GatewayProcess) -> list[int]:
    """Pids of the trace writer processes under the gateway's process tree."""
    found = subprocess.run(["pgrep", "-f", "gateway.traces.writer"], capture_output=True, text=True, check=False).stdout.split()
    ours = []
    for pid in map(int, found):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == gw.process.pid:  # the parent pid
                ours.append(pid)
    return ours


@pytest.mark.parametrize("workers", [1, 2])
def test_a_writer_that_dies_is_replaced_and_records_flow_again(gateway_factory: GatewayFactory, fake: FakeOpenAI, workers: int) -> None:
    gw = gateway_factory(traces_config(fake.base_url), args=("--workers", str(workers)))
    client(gw).chat.completions.create(
        model="demo-echo", messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": "w-before"}
    )
    trace(gw, "w-before")
    (first,) = wait_for(lambda: _writers(gw) or None, what="the trace writer")
    os.kill(first, signal.SIGKILL)
    for i in range(5):  # while no writer runs: queued in the workers, sent once one is back
        client(gw).chat.completions.create(
            model="demo-echo", messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": f"w-after-{i}"}
        )
    for i in range(5):
        assert trace(gw, f"w-after-{i}")["status"] == 200
    (second,) = _writers(gw)
    assert second != first
    assert "trace writer exited with -9; starting another" in gw.log()
    assert gw.stop() == 0
    assert "trace writer done" in gw.log()


# -- no record, however odd, stops the writer, the exporter or a batch (issue 13, items 4 and 10) --


def _writer(tmp_path: Path, otlp: str = "") -> writer.WriterProcess:
    settings = writer.Settings(
        store_url=f"sqlite:///{tmp_path}/traces.db",
        otlp_endpoint=otlp,
        service_name="test",
        queue_size=1000,
        retention_days=30,
        max_rows=100_000,
        max_captured_bytes=65536,
        providers={},
        export_timeout_s=5,
    )
    return writer.WriterProcess(settings)


def _sent(request_id: str, **fields: Any) -> dict[str, Any]:
    """A record as a worker's sink sends it, with only the fields every record has."""
    return {
        "request_id": request_id,
        "operation": "chat",
        "started_at": time.time(),
        "duration_s": 0.01,
        "status": 200,
        "trace_id": context.new_trace_id(),
        "span_id": context.new_span_id(),
        "capture": "none",
        **fields,
    }


def _send(sock: Any, records: list[Any]) -> None:
    payload = orjson.dumps({"records": records, "dropped": 0, "dropped_spans": 0})
    sock.sendall(len(payload).to_bytes(4, "little") + payload)


def _totals(sock: Any, done: Any) -> dict[str, Any]:
    """The writer's totals, as it sends them to every worker, once `done(totals)` holds."""
    buffer, deadline = b"", time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            buffer += sock.recv(65536)
        lines = [line for line in buffer.split(b"\n") if line]
        if lines and done(totals := orjson.loads(lines[-1])):
            return totals  # type: ignore[no-any-return]
    raise AssertionError(f"the writer's totals never settled: {buffer[-500:]!r}")


def _stored(tmp_path: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(tmp_path / "traces.db")
    conn.row_factory = sqlite3.Row
    return {row["request_id"]: dict(row) for row in conn.execute("SELECT * FROM traces")}


def test_odd_records_cost_only_themselves_in_the_store_and_the_export(tmp_path: Path) -> None:
    """Before: `tool_calls: 1` in a metadata-captured body killed the store thread (every later record
    lost), a span that could not be encoded killed the export thread, and neither was counted."""
    odd = [
        _sent("tool-calls-int", capture="metadata", request_body={"messages": [{"role": "assistant", "tool_calls": 1}]}),
        _sent("tool-function-str", capture="metadata", request_body={"messages": [], "tools": [{"type": "function", "function": "x"}]}),
        _sent("body-a-list", capture="metadata", request_body=[1, 2]),  # its content cannot be captured: kept without
        _sent("text-a-number", capture="full", request_json=5),
        _sent("bad-trace-id", trace_id="not hex"),  # stored; its span cannot be encoded
        _sent("status-too-big", status=2**64 - 1),  # SQLite cannot bind it: not stored, counted
        {"request_id": "no-fields"},
        "not even an object",
    ]
    with Receiver() as receiver:
        process = _writer(tmp_path, receiver.url)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(process.address)
        sock.settimeout(0.2)
        _send(sock, [_sent("first"), *odd, _sent("second")])
        _send(sock, [_sent("third")])
        totals = _totals(sock, lambda t: t["written"] + sum(t["dropped"].values()) == 11 and t["spans_exported"] == 8)
        sock.close()
        assert process.stop(30) == 0
    assert totals["dropped"] == {"queue_full": 0, "store_error": 0, "invalid_record": 3}
    assert totals["degraded"] == {"capture_failed": 2, "unencodable": 0}
    assert totals["spans_dropped"] == {"queue_full": 0, "export_failed": 0, "invalid_record": 3}
    assert receiver.count() == 8
    rows = _stored(tmp_path)
    assert set(rows) == {"first", "second", "third", "tool-calls-int", "tool-function-str", "body-a-list", "text-a-number", "bad-trace-id"}
    assert orjson.loads(rows["tool-calls-int"]["request"]) == {
        "model": None,
        "stream": False,
        "messages": [{"role": "assistant", "chars": 0}],
    }
    assert orjson.loads(rows["tool-function-str"]["request"])["tools"] == []
    assert rows["body-a-list"]["request"] is None and rows["body-a-list"]["capture"] == "metadata"
    assert rows["text-a-number"]["request"] is None


def test_a_record_its_worker_cannot_encode_costs_only_its_bodies(tmp_path: Path) -> None:
    """Before: the sink encoded a batch as one JSON document, so one body nested past orjson's 255
    levels failed the batch and every tenant's records of that window were lost, uncounted."""
    from gateway.pipeline.record import Record
    from gateway.traces.sink import TraceSink

    deep: Any = "x"
    for _ in range(300):
        deep = [deep]

    def record(request_id: str, body: dict[str, Any] | None = None) -> Record:
        r = Record(request_id, "chat", time.time(), time.perf_counter(), team="t", capture="metadata", request_body=body)
        context.start(r, None)
        return r

    async def run() -> dict[str, Any]:
        sink = TraceSink(process.address, queue_size=100, exporting=False)
        await sink.open()
        for r in (record("ok-1", {"model": "m"}), record("deep", {"model": "m", "metadata": deep}), record("ok-2", {"model": "m"})):
            sink.put(r)
        deadline = time.monotonic() + 20
        while sink.totals.get("written", 0) < 3 and time.monotonic() < deadline:  # noqa: ASYNC110 (totals arrive on the socket)
            await asyncio.sleep(0.05)
        await sink.close()
        return sink.totals

    process = _writer(tmp_path)
    totals = asyncio.run(run())
    assert process.stop(30) == 0
    assert totals["written"] == 3 and totals["degraded"]["unencodable"] == 1 and totals["dropped"]["invalid_record"] == 0
    rows = _stored(tmp_path)
    assert set(rows) == {"ok-1", "deep", "ok-2"}
    assert rows["deep"]["request"] is None and orjson.loads(rows["ok-1"]["request"])["model"] == "m"
