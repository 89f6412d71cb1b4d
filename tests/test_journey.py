"""The request's journey (issue #14): its stage order written once, in `gateway/pipeline/run.py`, and
the README saying the same; attempts with typed results (a stream gets its deadline when it is
built); the prompt's tokens counted once per request and kept on its record."""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.catalog import build_catalog
from gateway.config.load import build
from gateway.pipeline.dispatch import Completion, Stream
from gateway.pipeline.record import Record
from gateway.pipeline.route import Attempts
from gateway.pipeline.usage import count_prompt
from gateway.providers.base import Operation
from gateway.routing import RetryBudget
from gateway.sse import DONE
from gateway.tokens import Tokenizer
from gateway.upstream import Pool

ROOT = Path(__file__).resolve().parent.parent
ORDER = re.compile(r"auth ->.*?\(settle, metrics, trace\)")


def _order(text: str) -> str:
    found = ORDER.search(" ".join(text.split()))
    assert found is not None, "no stage order (auth -> ... -> finish (settle, metrics, trace)) found"
    return found.group(0)


def test_the_stage_order_is_written_once_and_the_readme_says_the_same() -> None:
    run = (ROOT / "gateway/pipeline/run.py").read_text()
    assert _order(ast.get_docstring(ast.parse(run)) or "") == _order((ROOT / "README.md").read_text())
    # nowhere else in gateway/ writes an order of its own
    for path in (ROOT / "gateway").rglob("*.py"):
        if path.name != "run.py":
            assert ORDER.search(" ".join(path.read_text().split())) is None, path
    assert "run.py" in (ROOT / "gateway/pipeline/__init__.py").read_text()
    # the app holds no stage: its endpoints hand the request to the journey
    app = ast.parse((ROOT / "gateway/app.py").read_text())
    names = {n.name for n in ast.walk(app) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert not names & {"proxy", "_admission", "_admit", "_apply_prompt", "_headers", "_finish", "_begin", "_answered", "_stream_done"}


def _mock_route(deadline_s: float = 30.0, chunk_delay_ms: float = 0.0) -> tuple[Attempts, Any]:
    demo = {"kind": "mock", "chunks": 4, "chunk_delay_ms": chunk_delay_ms}
    raw = {"providers": {"demo": demo}, "models": {"m": {"targets": [{"provider": "demo", "model": "echo"}], "deadline_s": deadline_s}}}
    catalog = build_catalog(build(raw, "config.toml", Path.cwd()), Pool(1))
    return Attempts(catalog, RetryBudget()), catalog.models["m"]


BODY = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


async def test_attempts_complete_gives_a_typed_answer() -> None:
    attempts, route = _mock_route()
    record = Record("rid", "chat", time.time(), time.perf_counter())
    done = await attempts.complete(Operation.CHAT, dict(BODY), route, record)
    assert isinstance(done, Completion)
    assert done.deployment is route.deployments[0]
    assert orjson.loads(done.content)["choices"][0]["message"]["content"] == done.reply.data["choices"][0]["message"]["content"]
    assert record.usage is not None and [a.status for a in record.attempts] == [200]


async def test_attempts_stream_is_built_with_its_deadline() -> None:
    attempts, route = _mock_route(deadline_s=12.5)
    record = Record("rid", "chat", time.time(), time.perf_counter())
    stream = await attempts.stream(Operation.CHAT, {**BODY, "stream": True}, route, record)
    assert isinstance(stream, Stream)
    assert stream.deadline == record.t0 + 12.5  # from the route's deadline, as constructed: nothing sets it afterwards
    finished: list[Record] = []
    chunks = [chunk async for chunk in stream.relay(finished.append)]
    assert chunks[-1].endswith(DONE)
    assert finished == [record] and record.usage is not None and record.error_type is None


async def test_a_stream_past_its_deadline_ends_with_an_error_event() -> None:
    attempts, route = _mock_route(deadline_s=1.0, chunk_delay_ms=400)  # 4 chunks 0.4 s apart: past 1 s at the third
    record = Record("rid", "chat", time.time(), time.perf_counter())
    stream = await attempts.stream(Operation.CHAT, {**BODY, "stream": True}, route, record)
    body = b"".join([chunk async for chunk in stream.relay(None)])
    assert b"event: error" in body and b"deadline_exceeded" in body and not body.endswith(DONE)
    assert record.error_type == "deadline_exceeded"


async def test_the_prompt_is_counted_once_per_encoding_and_kept_on_the_record() -> None:
    record = Record("rid", "chat", time.time(), time.perf_counter(), tokenizer=Tokenizer())
    body = {"messages": [{"role": "user", "content": "many words here " * 3000}]}  # large: counted in a worker thread
    counted = await count_prompt(Operation.CHAT, body, "gpt-4o-mini", record)
    assert (record.prompt_count, record.prompt_encoding) == (counted, "o200k_base")
    body["messages"] = [{"role": "user", "content": "hi"}]  # a second count would see this
    assert await count_prompt(Operation.CHAT, body, "gpt-4o", record) == counted  # the same encoding: kept
    assert await count_prompt(Operation.CHAT, body, "gpt-4", record) < 20  # cl100k_base: counted for it
