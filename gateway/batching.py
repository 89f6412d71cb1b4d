"""Embeddings micro-batching: one team's concurrent requests for a model go upstream as one call.

Who shares a call. Requests batch together only when they come from the same team, are served by
the same model (through the same fallbacks) with everything but `input` identical (`dimensions`,
`encoding_format`, `user`...) and have inputs of one kind (text or token ids). The team is the
response cache's tenant scope (`t:<team>`; every key of a team shares it), so an upstream call
never carries two teams' inputs; a model with `cache_scope = "shared"` shares answers across
teams, never calls.

When a batch goes. Formation follows concurrency, like the Redis cache's MGET drainer: a request
whose group has no call in flight goes upstream at once, alone, exactly as written and from its own
task (without concurrency, batching costs a dict lookup). Requests that arrive while a call of
their group is in flight wait, and go together as the next call the moment one returns; one that
would take the waiting batch past `max_inputs` inputs or `max_tokens` approximate tokens
(characters / 4) sends it at once. With `window_ms` > 0, a request of an idle group waits that
long for company instead. `max_inputs = 1` turns batching off.

Isolation. A batched call the provider refuses as a client error (400, 404, 409, 413, 422: the
provider's message may quote any input) is retried as one call per member, as its caller wrote
it, so only the request with the bad input fails, with its own error. Any other failure (rate
limit, server error, timeout, after the routing stage's retries) reaches every member, in the
gateway's words rather than the provider's. A caller that leaves does not cancel the batch.

Attribution. Vectors are split back by index. No supported wire format reports per-input usage
(OpenAI gives the call's total, Gemini none: the gateway counts it), so each member is charged its
own inputs' tokens, counted with tiktoken for the deployment's model (token-id inputs count their
ids); where the provider's total differs, it is apportioned in proportion to those counts (largest
remainder, ties to the earlier member), so the parts always add up to the provider's total.
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
from gateway.errors import GatewayError, UpstreamStatusError
from gateway.pipeline.dispatch import settle
from gateway.pipeline.record import Record
from gateway.providers.base import Deployment, Reply, Usage
from gateway.providers.openai import garbage
from gateway.tokens import Tokenizer

Answer = tuple[bytes, Reply]
# one upstream embeddings call, with the routing stage's retries and fallbacks: the deployment that answered, and its answer
Complete = Callable[[dict[str, Any], ModelRoute, Record], Awaitable[tuple[Deployment, Answer]]]

# a batch's inputs up to this many approximate tokens (~1 KB of text, ~60 us of tiktoken) are
# counted on the event loop; more costs less as one hop to a thread than it would block the loop
INLINE_TOKENS = 256


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
    """Split `total` in proportion to `weights`, in whole numbers that add up to `total`; the
    largest remainders get the leftover units, the earlier of equal ones first."""
    scale = sum(weights)
    if scale <= 0:
        weights, scale = [1] * len(weights), len(weights)
    exact = [total * w / scale for w in weights]
    parts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: parts[i] - exact[i])
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def count_inputs(tokenizer: Tokenizer, groups: list[list[Any]], model: str) -> list[int]:
    """Each group's tokens, as the provider would count them (CPU-bound: see INLINE_TOKENS)."""
    return [tokenizer.count_prompt(inputs, model) for inputs in groups]


@dataclass(slots=True)
class _Caller:
    body: dict[str, Any]
    inputs: list[Any]
    weight: int  # approximate tokens
    record: Record
    future: asyncio.Future[Answer]


@dataclass(slots=True)
class _Group:
    """The requests that may share a call (see the module docstring), and its calls in flight."""

    key: tuple[str, ...]
    route: ModelRoute
    settings: BatchSection
    text: bool  # inputs are text (else token ids)
    in_flight: int = 0
    waiting: list[_Caller] = field(default_factory=list)
    inputs: int = 0  # of the waiting callers
    tokens: int = 0
    timer: asyncio.TimerHandle | None = None


def _group_key(team: str, route: ModelRoute, kind: str, body: dict[str, Any]) -> tuple[str, ...]:
    rest = {k: v for k, v in body.items() if k != "input"}
    # the fallbacks too: a batch goes through its first member's route, which must be every member's
    return (team, route.name, kind, orjson.dumps(rest, option=orjson.OPT_SORT_KEYS).decode(), *route.fallbacks)


class Batcher:
    def __init__(
        self, settings: dict[str, BatchSection], complete: Complete, observe: Callable[[int, int], None] = lambda requests, inputs: None
    ) -> None:
        self._settings = {model: s for model, s in settings.items() if s.max_inputs > 1}
        self._complete = complete
        self._observe = observe
        self._groups: dict[tuple[str, ...], _Group] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def embed(self, body: dict[str, Any], route: ModelRoute, record: Record) -> Answer:
        """The answer to one embeddings request; `record.team` decides whom it may share a call with."""
        settings = self._settings.get(route.name)
        split = split_inputs(body.get("input")) if settings is not None else None
        if settings is None or split is None:
            return (await self._complete(body, route, record))[1]
        kind, inputs = split
        weight = approx_tokens(inputs)
        if len(inputs) >= settings.max_inputs or weight >= settings.max_tokens:
            self._observe(1, len(inputs))
            return (await self._complete(body, route, record))[1]
        key = _group_key(record.team or "", route, kind, body)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key, route, settings, kind == "text")
        if group.in_flight == 0 and not group.waiting and settings.window_ms == 0:
            return await self._alone(group, body, len(inputs), record)
        caller = _Caller(body, inputs, weight, record, asyncio.get_running_loop().create_future())
        self._join(group, caller)
        return await caller.future

    async def _alone(self, group: _Group, body: dict[str, Any], inputs: int, record: Record) -> Answer:
        """Nothing of the group is in flight: go at once, from the caller's task."""
        group.in_flight += 1
        self._observe(1, inputs)
        try:
            return (await self._complete(body, group.route, record))[1]
        finally:
            self._returned(group)

    def _join(self, group: _Group, caller: _Caller) -> None:
        settings = group.settings
        if group.waiting and (
            group.inputs + len(caller.inputs) > settings.max_inputs or group.tokens + caller.weight > settings.max_tokens
        ):
            self._send(group)
        group.waiting.append(caller)
        group.inputs += len(caller.inputs)
        group.tokens += caller.weight
        if group.inputs >= settings.max_inputs:
            self._send(group)
        elif group.in_flight == 0 and group.timer is None:
            group.timer = asyncio.get_running_loop().call_later(settings.window_ms / 1000, self._send, group)

    def _send(self, group: _Group) -> None:
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        callers, group.waiting, group.inputs, group.tokens = group.waiting, [], 0, 0
        if not callers:
            return
        group.in_flight += 1
        task = asyncio.create_task(self._call(group, callers))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _returned(self, group: _Group) -> None:
        """A call of the group is over: those who waited for it go now, as one call."""
        group.in_flight -= 1
        if group.waiting and group.timer is None:
            self._send(group)
        elif group.in_flight == 0 and not group.waiting and self._groups.get(group.key) is group:
            del self._groups[group.key]

    async def _call(self, group: _Group, callers: list[_Caller]) -> None:
        route, refused = group.route, False
        self._observe(len(callers), sum(len(c.inputs) for c in callers))
        try:
            if len(callers) == 1:
                await _one(self._complete, callers[0], route)
            else:
                refused = await self._many(group, callers)
        finally:
            self._returned(group)
        try:
            if refused:  # each member alone: only the one with the bad input fails, with its own error
                await asyncio.gather(*(_one(self._complete, c, route) for c in callers if not c.future.done()))
        finally:
            for caller in callers:  # only when this task itself was cancelled (shutdown)
                if not caller.future.done():
                    caller.future.cancel()

    async def _many(self, group: _Group, callers: list[_Caller]) -> bool:
        """One call for every caller; True when the provider refused it as a client error."""
        first = callers[0]
        tokenizer = first.record.tokenizer
        start = first.record
        shared = Record(start.request_id + "-batch", start.operation, time.time(), time.perf_counter(), start.model, tokenizer=tokenizer)
        body = {**first.body, "input": [i for c in callers for i in c.inputs]}
        try:
            deployment, (_, reply) = await self._complete(body, group.route, shared)
            items = _items(reply, sum(len(c.inputs) for c in callers))
            counts = await _token_counts(tokenizer, callers, group.text, deployment.model)
        except UpstreamStatusError:
            return True
        except GatewayError as exc:
            for caller in callers:
                _took_part(caller.record, shared)
                _fail(caller, _in_own_words(exc))
            return False
        except Exception as exc:  # a bug reaches every caller rather than leaving them waiting
            for caller in callers:
                _fail(caller, exc)
            return False
        total = reply.usage.prompt_tokens if reply.usage is not None else sum(counts)
        offset = 0
        for caller, used in zip(callers, apportion(total, counts), strict=True):
            part = [{**item, "index": j} for j, item in enumerate(items[offset : offset + len(caller.inputs)])]
            offset += len(caller.inputs)
            _resolve(caller, _share(caller, part, used, reply, deployment, shared))
        return False


async def _one(complete: Complete, caller: _Caller, route: ModelRoute) -> None:
    """A batch of one: the caller's request exactly as written, on its own record."""
    try:
        _, answer = await complete(caller.body, route, caller.record)
    except Exception as exc:
        _fail(caller, exc)
    else:
        _resolve(caller, answer)


def _items(reply: Reply, expected: int) -> list[dict[str, Any]]:
    """The answer's vectors in input order; a count or index that does not add up is garbage."""
    items = reply.data.get("data")
    if not isinstance(items, list) or len(items) != expected:
        raise garbage()
    if not all(isinstance(i, dict) and isinstance(i.get("index", 0), int) for i in items):
        raise garbage()
    return sorted(items, key=lambda item: item.get("index", 0))


async def _token_counts(tokenizer: Tokenizer, callers: list[_Caller], text: bool, model: str) -> list[int]:
    groups = [c.inputs for c in callers]
    if not text:
        return count_inputs(tokenizer, groups, model)  # token ids: their number, no encoding involved
    await tokenizer.load(model)
    if sum(c.weight for c in callers) <= INLINE_TOKENS:
        return count_inputs(tokenizer, groups, model)
    return await asyncio.to_thread(count_inputs, tokenizer, groups, model)


def _in_own_words(exc: GatewayError) -> GatewayError:
    """A batched call's error, for one of its members: the provider's message may quote another
    member's input, so it says what failed in the gateway's words (status, code, Retry-After kept)."""
    error = type(exc)(
        f"the upstream call carrying this request with others failed ({exc.error_type})",
        param=exc.param,
        code=exc.code,
        retry_after=exc.retry_after,
        status=exc.status,
    )
    error.retryable, error.reason = exc.retryable, exc.reason
    return error


def _share(caller: _Caller, items: list[dict[str, Any]], tokens: int, reply: Reply, deployment: Deployment, shared: Record) -> Answer:
    estimated = reply.usage is not None and reply.usage.estimated
    usage = Usage(prompt_tokens=tokens, estimated=estimated)
    record = caller.record
    settle(record, deployment, usage)
    _took_part(record, shared)
    usage_json: dict[str, Any] = {"prompt_tokens": tokens, "total_tokens": tokens}
    if record.priced:
        usage_json["cost_usd"] = record.cost_usd
    data = {"object": "list", "data": items, "model": reply.data.get("model", deployment.model), "usage": usage_json}
    return orjson.dumps(data), Reply(data, None, usage)


def _took_part(record: Record, shared: Record) -> None:
    """A member's trace shows the batched call it took part in: its target, time and attempts."""
    record.target, record.upstream_s, record.attempts = shared.target, shared.upstream_s, shared.attempts


def _resolve(caller: _Caller, answer: Answer) -> None:
    if not caller.future.done():
        caller.future.set_result(answer)


def _fail(caller: _Caller, exc: BaseException) -> None:
    if not caller.future.done():
        caller.future.set_exception(exc)
