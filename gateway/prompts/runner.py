"""Prompt tests: a version's cases, each sent through a gateway as `prompt:ID@N` with its variables,
and the answer checked against the case's assertions.

One code path serves both callers: `gateway prompts test` passes an httpx client for the gateway's
URL, and the label endpoint (before moving `production`) passes one bound in-process to the app
itself, so the cases take exactly the path a client request takes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import jsonschema
import orjson

from gateway.prompts.schema import PromptCase

MAX_PARALLEL = 4


@dataclass(frozen=True, slots=True)
class CaseResult:
    index: int  # 1-based
    failures: tuple[str, ...]
    latency_ms: float | None
    cost_usd: float | None
    served: str | None  # the x-gateway-prompt header: which version actually answered

    @property
    def ok(self) -> bool:
        return not self.failures

    def json(self) -> dict[str, object]:
        return {
            "case": self.index,
            "ok": self.ok,
            "failures": list(self.failures),
            "latency_ms": self.latency_ms,
            "cost_usd": self.cost_usd,
            "served": self.served,
        }


async def run_cases(
    client: httpx.AsyncClient, prompt_id: str, version: int, cases: Sequence[PromptCase], headers: dict[str, str]
) -> list[CaseResult]:
    gate = asyncio.Semaphore(MAX_PARALLEL)

    async def one(i: int, case: PromptCase) -> CaseResult:
        async with gate:
            return await run_case(client, prompt_id, version, i, case, headers=headers)

    return list(await asyncio.gather(*(one(i + 1, c) for i, c in enumerate(cases))))


async def run_case(
    client: httpx.AsyncClient, prompt_id: str, version: int, index: int, case: PromptCase, *, headers: dict[str, str]
) -> CaseResult:
    body = {"model": f"prompt:{prompt_id}@{version}", "prompt": {"variables": case.variables}}
    t0 = time.perf_counter()
    try:
        reply = await client.post("/v1/chat/completions", json=body, headers=headers)
    except httpx.HTTPError as exc:
        return CaseResult(index, (f"request failed: {type(exc).__name__}",), None, None, None)
    latency_ms = (time.perf_counter() - t0) * 1000
    cost_header = reply.headers.get("x-gateway-cost-usd")
    cost = float(cost_header) if cost_header else None
    served = reply.headers.get("x-gateway-prompt")
    if reply.status_code != 200:
        return CaseResult(index, (f"HTTP {reply.status_code}: {_error_message(reply)}",), latency_ms, cost, served)
    text = _answer(reply)
    return CaseResult(index, tuple(check(case, text, latency_ms, cost)), latency_ms, cost, served)


def check(case: PromptCase, text: str, latency_ms: float, cost: float | None) -> list[str]:
    """Every assertion the answer breaks, each said in one line."""
    failures = []
    if case.contains is not None and case.contains not in text:
        failures.append(f"contains {case.contains!r}: not found")
    if case.not_contains is not None and case.not_contains in text:
        failures.append(f"not_contains {case.not_contains!r}: found")
    if case.regex is not None and re.search(case.regex, text) is None:
        failures.append(f"regex {case.regex!r}: no match")
    if case.json_schema is not None:
        failures.extend(_schema_failures(case.json_schema, text))
    if case.max_latency_ms is not None and latency_ms > case.max_latency_ms:
        failures.append(f"max_latency_ms {case.max_latency_ms:g}: took {latency_ms:.0f}")
    if case.max_cost_usd is not None:
        if cost is None:
            failures.append(f"max_cost_usd {case.max_cost_usd:g}: the gateway reported no cost (no price for the model)")
        elif cost > case.max_cost_usd:
            failures.append(f"max_cost_usd {case.max_cost_usd:g}: cost {cost:.6f}")
    return failures


def _schema_failures(schema: dict[str, object], text: str) -> list[str]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return ["json_schema: the answer is not valid JSON"]
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(value))
    return [] if error is None else [f"json_schema: {error.message}"]


def _answer(reply: httpx.Response) -> str:
    try:
        content = reply.json()["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


def _error_message(reply: httpx.Response) -> str:
    try:
        return str(reply.json()["error"]["message"])
    except (ValueError, LookupError, TypeError):
        return reply.text[:200]


def table(results: Sequence[CaseResult]) -> str:
    rows = [("CASE", "RESULT", "LATENCY_MS", "COST_USD", "DETAIL")]
    for r in results:
        latency = f"{r.latency_ms:.0f}" if r.latency_ms is not None else "-"
        cost = f"{r.cost_usd:.6f}" if r.cost_usd is not None else "-"
        rows.append((str(r.index), "pass" if r.ok else "FAIL", latency, cost, "; ".join(r.failures)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4] for row in rows]
    passed = sum(r.ok for r in results)
    return "\n".join([*(line.rstrip() for line in lines), f"{passed}/{len(results)} passed"])
