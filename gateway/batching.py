"""Embeddings micro-batching: concurrent requests for the same model go upstream as one call.

The first request of a group opens a batch and arms a timer (`window_ms`, default 2 ms); requests
that arrive before it fires join the batch, up to `max_inputs` inputs and `max_tokens` approximate
tokens (a request that would overflow it sends the open batch at once and opens the next). The
batch then goes upstream as one request whose `input` is every caller's inputs in order; the
answer's vectors are split back by index, and its usage is apportioned by each caller's share of
the approximate tokens (largest remainder, so the parts add up to the provider's total). An
upstream error reaches every caller in the batch.

Requests batch together only when everything but `input` is identical (served model,
`dimensions`, `encoding_format`, `user`...) and their inputs are of the same kind (text or token
ids). A batch of one is sent exactly as its caller wrote it. A caller that leaves does not cancel
the batch: the others still need it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.catalog import ModelRoute
from gateway.config.schema import BatchSection
from gateway.pipeline.dispatch import settle
from gateway.pipeline.record import Record
from gateway.providers.base import Deployment, Reply, Usage
from gateway.providers.openai import garbage

Answer = tuple[bytes, Reply]
# one upstream embeddings call, with the routing stage's retries and fallbacks: the deployment that answered, and its answer
Complete = Callable[[dict[str, Any], ModelRoute, Record], Awaitable[tuple[Deployment, Answer]]]


def split_inputs(value: Any) -> tuple[str, list[Any]] | None:
    """(kind, inputs) of an embeddings `input`, or None when it cannot be batched."""
    if isinstance(value, str):
        return "text", [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, str) for v in value):
        return "text", value
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return "tokens", [value]
    if all(isinstance(v, list) for v in value):
        return "tokens", value
    return None


def approx_tokens(inputs: list[Any]) -> int:
    return sum(len(i) // 4 + 1 if isinstance(i, str) else len(i) for i in inputs)


def apportion(total: int, weights: list[int]) -> list[int]:
    """Split `total` in proportion to `weights`, in whole numbers that add up to `total`."""
    scale = sum(weights)
    if scale <= 0:
        weights, scale = [1] * len(weights), len(weights)
    exact = [total * w / scale for w in weights]
    parts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: parts[i] - exact[i])
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


@dataclass(slots=True)
class _Caller:
    body: dict[str, Any]
    inputs: list[Any]
    weight: int
    record: Record
    future: asyncio.Future[Answer]


@dataclass(slots=True)
class _Batch:
    route: ModelRoute
    settings: BatchSection
    callers: list[_Caller] = field(default_factory=list)
    inputs: int = 0
    tokens: int = 0
    timer: asyncio.TimerHandle | None = None


class Batcher:
    def __init__(
        self, settings: dict[str, BatchSection], complete: Complete, observe: Callable[[int, int], None] = lambda requests, inputs: None
    ) -> None:
        self._settings = {model: s for model, s in settings.items() if s.window_ms > 0}
        self._complete = complete
        self._observe = observe
        self._open: dict[tuple[str, ...], _Batch] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def embed(self, body: dict[str, Any], route: ModelRoute, record: Record) -> Answer:
        settings = self._settings.get(route.name)
        split = split_inputs(body.get("input"))
        if settings is None or split is None:
            return (await self._complete(body, route, record))[1]
        kind, inputs = split
        weight = approx_tokens(inputs)
        if len(inputs) >= settings.max_inputs or weight >= settings.max_tokens:
            self._observe(1, len(inputs))
            return (await self._complete(body, route, record))[1]
        rest = {k: v for k, v in body.items() if k != "input"}
        group = (route.name, kind, orjson.dumps(rest, option=orjson.OPT_SORT_KEYS).decode())
        batch = self._open.get(group)
        if batch is not None and (batch.inputs + len(inputs) > settings.max_inputs or batch.tokens + weight > settings.max_tokens):
            self._send(group, batch)
            batch = None
        if batch is None:
            batch = self._open[group] = _Batch(route, settings)
            batch.timer = asyncio.get_running_loop().call_later(settings.window_ms / 1000, self._send, group, batch)
        caller = _Caller(body, inputs, weight, record, asyncio.get_running_loop().create_future())
        batch.callers.append(caller)
        batch.inputs += len(inputs)
        batch.tokens += weight
        if batch.inputs >= settings.max_inputs:
            self._send(group, batch)
        return await caller.future

    def _send(self, group: tuple[str, ...], batch: _Batch) -> None:
        if self._open.get(group) is batch:
            del self._open[group]
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.create_task(self._call(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _call(self, batch: _Batch) -> None:
        callers = batch.callers
        self._observe(len(callers), batch.inputs)
        try:
            if len(callers) == 1:
                _, answer = await self._complete(callers[0].body, batch.route, callers[0].record)
                _resolve(callers[0], answer)
                return
            await self._call_many(batch)
        except Exception as exc:  # GatewayErrors and bugs alike reach every caller
            for caller in callers:
                if not caller.future.done():
                    caller.future.set_exception(exc)

    async def _call_many(self, batch: _Batch) -> None:
        callers = batch.callers
        first = callers[0]
        shared = Record(first.record.request_id + "-batch", first.record.operation, time.time(), time.perf_counter(), first.record.model)
        body = {**first.body, "input": [i for c in callers for i in c.inputs]}
        deployment, (_, reply) = await self._complete(body, batch.route, shared)
        items = reply.data.get("data")
        if not isinstance(items, list) or len(items) != batch.inputs or not all(isinstance(i, dict) for i in items):
            raise garbage()
        items.sort(key=lambda item: item.get("index", 0))
        total = reply.usage.prompt_tokens if reply.usage is not None else 0
        offset = 0
        for caller, tokens in zip(callers, apportion(total, [c.weight for c in callers]), strict=True):
            part = [{**item, "index": j} for j, item in enumerate(items[offset : offset + len(caller.inputs)])]
            offset += len(caller.inputs)
            _resolve(caller, _share(caller, part, tokens, reply, deployment, shared))


def _share(caller: _Caller, items: list[dict[str, Any]], tokens: int, reply: Reply, deployment: Deployment, shared: Record) -> Answer:
    estimated = reply.usage is not None and reply.usage.estimated
    usage = Usage(prompt_tokens=tokens, estimated=estimated)
    record = caller.record
    settle(record, deployment, usage)
    record.target, record.upstream_s, record.attempts = shared.target, shared.upstream_s, shared.attempts
    usage_json: dict[str, Any] = {"prompt_tokens": tokens, "total_tokens": tokens}
    if record.priced:
        usage_json["cost_usd"] = record.cost_usd
    data = {"object": "list", "data": items, "model": reply.data.get("model", deployment.model), "usage": usage_json}
    return orjson.dumps(data), Reply(data, None, usage)


def _resolve(caller: _Caller, answer: Answer) -> None:
    if not caller.future.done():
        caller.future.set_result(answer)
