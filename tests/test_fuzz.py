"""Generated bodies thrown at a live gateway (issue 13): whatever a client sends, the answer is a 2xx or
an OpenAI-shaped 4xx (never a 5xx, never an error that is not JSON), the gateway keeps serving, and
every request leaves exactly one trace row, with content capture on (`metadata`: the mode that reads
the body's shape in the trace writer).

Bodies are chat, completion and embedding requests whose every field is either something OpenAI
allows or any JSON value at all (wrong types, deep nesting, huge numbers, any unicode), plus raw
bytes that are not JSON. Both a mock model (served in the gateway) and the fake OpenAI upstream
are asked. Sized for CI: a few hundred examples, about a minute on a loaded machine.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import KEYS, GatewayFactory
from tests.fakes.openai_upstream import FakeOpenAI
from tests.traceutil import traces_config, wait_for

EXAMPLES = 400

TEXT = st.text(max_size=30)
SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | TEXT
ANY = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12
)


def _nest(depth: int, kind: str) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


DEEP = st.builds(_nest, st.integers(1, 300), st.sampled_from(["list", "dict"]))


def field(allowed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly (17 in 20) what OpenAI allows, else any JSON value or a deep one: a body of several
    fields is then wrong in one of them about as often as it is right in all."""
    return st.integers(0, 19).flatmap(lambda roll: ANY if roll < 2 else DEEP if roll == 2 else allowed)


CALL = st.fixed_dictionaries(
    {
        "id": field(TEXT),
        "type": field(st.just("function")),
        "function": field(st.fixed_dictionaries({"name": field(TEXT), "arguments": field(TEXT)})),
    }
)
PART = st.fixed_dictionaries({"type": field(st.just("text")), "text": field(TEXT)})
MESSAGE = st.fixed_dictionaries(
    {
        "role": field(st.sampled_from(["system", "user", "assistant", "tool", "developer"])),
        "content": field(TEXT | st.none() | st.lists(PART, max_size=2)),
    },
    optional={"tool_calls": field(st.lists(CALL, max_size=2)), "tool_call_id": field(TEXT), "name": field(TEXT)},
)
TOOL = st.fixed_dictionaries(
    {"type": field(st.just("function")), "function": field(st.fixed_dictionaries({"name": field(TEXT)}, optional={"parameters": ANY}))}
)
MODEL = st.sampled_from(["demo-echo", "gpt-4o-mini"])
OPTIONAL = {
    "stream": field(st.booleans()),
    "n": field(st.integers(1, 3)),
    "max_tokens": field(st.integers(1, 64)),
    "max_completion_tokens": field(st.integers(1, 64)),
    "temperature": field(st.floats(0, 2)),
    "top_p": field(st.floats(0, 1)),
    "seed": field(st.integers(0, 2**63 - 1)),
    "stop": field(TEXT | st.lists(TEXT, max_size=3)),
    "stream_options": field(st.just({"include_usage": True})),
    "user": field(TEXT),
    "metadata": field(ANY),
}
TOKENS = st.lists(st.integers(0, 50_000), min_size=1, max_size=5)
CHAT = st.fixed_dictionaries(
    {"model": field(MODEL), "messages": field(st.lists(MESSAGE, min_size=1, max_size=3))},
    optional={**OPTIONAL, "tools": field(st.lists(TOOL, max_size=2)), "tool_choice": field(st.sampled_from(["auto", "none"]))},
)
COMPLETION = st.fixed_dictionaries(
    {
        "model": field(MODEL),
        "prompt": field(TEXT | st.lists(TEXT, min_size=1, max_size=3) | TOKENS | st.lists(TOKENS, min_size=1, max_size=2)),
    },
    optional=OPTIONAL,
)
EMBEDDING = st.fixed_dictionaries(
    {"model": st.just("demo-echo"), "input": field(TEXT | st.lists(TEXT, min_size=1, max_size=3) | TOKENS)},
    optional={"encoding_format": field(st.sampled_from(["float", "base64"])), "dimensions": field(st.integers(1, 8))},
)
PATHS = ["/chat/completions", "/completions", "/embeddings"]


def _encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


CASES = st.one_of(
    st.tuples(st.just("/chat/completions"), CHAT.map(_encode)),
    st.tuples(st.just("/chat/completions"), CHAT.map(_encode)),  # the richest shape: asked thrice as often
    st.tuples(st.just("/chat/completions"), CHAT.map(_encode)),
    st.tuples(st.just("/completions"), COMPLETION.map(_encode)),
    st.tuples(st.just("/embeddings"), EMBEDDING.map(_encode)),
    st.tuples(st.sampled_from(PATHS), ANY.map(_encode)),
    st.tuples(st.sampled_from(PATHS), st.binary(max_size=80)),
)


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code < 300:
        return
    assert 400 <= response.status_code < 500 and response.headers["content-type"].startswith("application/json"), response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str) and error["message"]


def test_generated_bodies_get_an_answer_and_exactly_one_trace_row_each(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(traces_config(fake.base_url, telemetry='capture_content = "metadata"'))
    sent: list[str] = []
    ids = itertools.count()
    with httpx.Client(base_url=gw.base_url, timeout=30) as http:

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=CASES, key=st.sampled_from([KEYS["alpha"], KEYS["alpha"], KEYS["beta"]]))  # beta may use demo-echo only
        def probe(case: tuple[str, bytes], key: str) -> None:
            path, content = case
            request_id = f"fuzz-{next(ids)}"
            sent.append(request_id)
            headers = {"authorization": f"Bearer {key}", "content-type": "application/json", "x-request-id": request_id}
            _check(http.post(path, content=content, headers=headers))

        probe()
        assert http.get(gw.url + "/healthz").status_code == 200
    assert len(sent) >= EXAMPLES

    def counted() -> dict[str, int] | None:
        try:
            with sqlite3.connect(gw.directory / "traces.db") as conn:
                rows = dict(conn.execute("SELECT request_id, count(*) FROM traces WHERE request_id LIKE 'fuzz-%' GROUP BY request_id"))
        except sqlite3.OperationalError:  # the writer has not created the table yet
            return None
        return rows if set(sent) <= set(rows) else None

    rows = wait_for(counted, timeout=30, what="a trace row for every request")
    assert set(rows) == set(sent) and set(rows.values()) == {1}
