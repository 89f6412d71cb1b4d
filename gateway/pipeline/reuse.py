"""The reuse stage, between routing and dispatch: cache hits, shared (coalesced) calls, batched embeddings.

For a request of a model with `cache` on:
1. Is it cacheable? The model's mode ("all", or "deterministic": temperature 0 or a seed), the
   team's opt-out, and `x-gateway-cache: no-store` decide. If not, it bypasses the stage: chat and
   completions go back to the ordinary path, having paid a dict lookup and a few checks.
2. Unless `x-gateway-cache: refresh`, the store is read; a hit is answered at once, as the stored
   JSON or as a replayed SSE stream.
3. Otherwise the request joins the call in flight for the same (scope, key, reply shape), and is
   `coalesced`, or starts one and is the `miss`. The call runs on a record of its own; when it ends,
   each subscriber copies what it learned (the leader its usage and cost, the others the usage as
   cached tokens and a cost of zero, as for a hit, which is also what the usage in their bytes is
   rewritten to say: `entry.as_reused`). A complete, successful answer is written to the store.

Who pays for a shared call: its leader, exactly once, for everything the call consumed. A leader
whose client leaves while others still follow does not stop the call; its trace (499) and its
limits are settled when the call ends, with the call's whole usage. When every subscriber has left,
the call is cancelled and the leader is charged what had been generated (the prompt and the
completion relayed so far, gateway/pipeline/dispatch.py `charge_consumed`). Followers pay nothing.

Coalescing covers cacheable requests only: sharing one sampled answer between requests that asked
for randomness would change what they get. Calls are shared per reply shape (JSON, stream, stream
with usage), so every subscriber receives the bytes the call produced (usage aside); a JSON and a
streaming request for the same key make two calls, and either is later answered from the cache.
A failing store is bypassed for the request (`x-gateway-cache: bypass`, counted in
`gateway_cache_errors_total`); the request still coalesces.

Embeddings always pass through here, cacheable or not: a miss goes upstream through the `Batcher`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.responses import Response

from gateway.batching import Batcher
from gateway.cache import entry
from gateway.cache.entry import Assembler
from gateway.cache.flight import Flight, Flights
from gateway.cache.key import cache_key, deterministic, scope
from gateway.cache.store import CacheUnavailable, Store
from gateway.catalog import ModelRoute
from gateway.config import Config
from gateway.config.policies import Principal
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.pipeline import answer
from gateway.pipeline.record import Record
from gateway.pipeline.route import Attempts
from gateway.providers.base import Deployment, Operation, Reply, Usage

Answer = tuple[bytes, Reply | None]
Finish = Callable[[Record], None]  # the finish stage (pipeline/finish.py): for the streams answered here


@dataclass(frozen=True, slots=True)
class CachePolicy:
    mode: str  # "deterministic" | "all"
    ttl_s: int
    shared: bool


class Upstream:
    """The one upstream call of a flight, through the routing stage (retries, fallbacks) and, for
    embeddings, the batcher."""

    __slots__ = ("body", "op", "record", "reuse", "route")

    def __init__(self, op: Operation, body: dict[str, Any], route: ModelRoute, record: Record, reuse: Reuse) -> None:
        self.op, self.body, self.route, self.record, self.reuse = op, body, route, record, reuse

    async def complete(self) -> Answer:
        if self.op is Operation.EMBEDDINGS:
            return await self.reuse.batcher.embed(self.body, self.route, self.record)
        done = await self.reuse.attempts.complete(self.op, self.body, self.route, self.record)
        return done.content, done.reply

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """The relayed stream, opened: an error before its first byte is raised here. The call's own
        record is not finished: its subscribers' records are, with what they adopt from it."""
        stream = await self.reuse.attempts.stream(self.op, self.body, self.route, self.record)
        return stream.relay(None)


def adopt(record: Record, source: Record, leader: bool) -> None:
    """Copy into a subscriber's record what the shared call learned."""
    record.target, record.finish_reason, record.priced = source.target, source.finish_reason, source.priced
    record.upstream_s = source.upstream_s
    usage = source.usage
    if leader:
        record.usage, record.cost_usd, record.attempts = usage, source.cost_usd, source.attempts
        record.unanswered = source.unanswered  # a prompt sent and never answered is the leader's to pay
    elif usage is not None:
        record.usage = Usage(usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens, estimated=usage.estimated)
        record.cost_usd = 0.0
    if source.error_type is not None and source.status != 499:
        record.status, record.error_type = source.status, source.error_type
    record.response_id, record.response_model = source.response_id, source.response_model
    if record.capture == "full":
        record.response_json = source.response_json


class Reuse:
    def __init__(self, config: Config, store: Store, metrics: Metrics, attempts: Attempts) -> None:
        models = config.file.models
        self.attempts = attempts
        self.keepalive_s = config.file.server.sse_keepalive_s
        self.cached = {
            name: CachePolicy(m.cache, m.cache_ttl_s, m.cache_scope == "shared") for name, m in models.items() if m.cache != "off"
        }
        self.store = store
        self.metrics = metrics
        self.flights: Flights[Answer] = Flights()
        self.batcher = Batcher({name: m.batch for name, m in models.items()}, self._embed, metrics.batch)

    async def _embed(self, body: dict[str, Any], route: ModelRoute, record: Record) -> tuple[Deployment, tuple[bytes, Reply]]:
        done = await self.attempts.complete(Operation.EMBEDDINGS, body, route, record)
        return done.deployment, (done.content, done.reply)

    async def serve(
        self,
        request_headers: Mapping[str, str],
        principal: Principal,
        op: Operation,
        body: dict[str, Any],
        route: ModelRoute,
        record: Record,
        finish: Finish,
    ) -> Response | None:
        """The answer, or None when the ordinary path should serve the request."""
        stream = body.get("stream") is True
        if stream and op is Operation.EMBEDDINGS:
            return None
        policy = self.cached.get(route.name)
        control = request_headers.get("x-gateway-cache")
        if (
            policy is None
            or not principal.cache
            or control == "no-store"
            or (policy.mode == "deterministic" and not deterministic(op, body))
        ):
            if op is not Operation.EMBEDDINGS:
                return None
            return answer.json(record, *await self.batcher.embed(body, route, record))
        key = cache_key(scope(principal.team, policy.shared, route.fallbacks), op, route.name, body, record.prompt_hash)
        record.stream = stream
        ttl_s = policy.ttl_s
        if control != "refresh":
            try:
                value = await self.store.get(key)
            except CacheUnavailable:
                self.metrics.cache_errors.labels("get").inc()
                value, ttl_s = None, 0
            if value is not None:
                hit = self._hit(value, body, stream, record, finish)
                if hit is not None:
                    return hit
        ident = (key, stream, stream and _include_usage(body))
        flight = self.flights.get(ident)
        if flight is None:
            record.cache = "miss" if ttl_s else "bypass"
            own = dataclasses.replace(record, attempts=[])
            upstream = Upstream(op, body, route, own, self)
            flight = self.flights.start(ident, own, partial(self._stream_work if stream else self._work, upstream, key, ttl_s))
        else:
            record.cache = "coalesced"
        flight.join()
        if stream:
            return await self._subscribe(flight, record, finish)
        try:
            content, reply = await flight.outcome()
        except GatewayError:  # what the failed call consumed (a prompt sent and never answered) is the leader's
            adopt(record, flight.record, record.cache != "coalesced")
            raise
        finally:
            flight.leave()
        adopt(record, flight.record, record.cache != "coalesced")
        return answer.json(record, entry.as_reused(content) if record.cache == "coalesced" else content, reply)

    # answers ---------------------------------------------------------------------------------
    def _hit(self, value: bytes, body: dict[str, Any], stream: bool, record: Record, finish: Finish) -> Response | None:
        try:
            found = entry.decode(value)
            events = entry.replay(found.body, _include_usage(body)) if stream else []
        except ValueError:  # a damaged entry (orjson's error is a ValueError too): answer as a miss
            self.metrics.cache_errors.labels("decode").inc()
            return None
        record.cache, record.usage, record.cost_usd, record.priced = "hit", found.usage, 0.0, found.priced
        record.response_id, record.response_model = found.response_id, found.response_model
        if record.capture == "full":
            record.response_json = found.body.decode()
        if not stream:
            return answer.json(record, found.body, None)
        return answer.stream(record, _replay(b"".join(events), record, finish), self.keepalive_s, None)

    async def _subscribe(self, flight: Flight[Answer], record: Record, finish: Finish) -> Response:
        try:
            await flight.first()
        except BaseException:
            flight.leave()
            if record.cache != "coalesced":
                record.unanswered = flight.record.unanswered
            raise
        record.target = flight.record.target
        return answer.stream(record, self._follow(flight, record, finish), self.keepalive_s, record.mark_stalled)

    async def _follow(self, flight: Flight[Answer], record: Record, finish: Finish) -> AsyncGenerator[bytes, None]:
        complete, follower = False, record.cache == "coalesced"
        try:
            async for chunk in flight.follow():
                yield entry.as_reused(chunk) if follower else chunk
            complete = True
        finally:
            flight.leave()

            def settle() -> None:
                adopt(record, flight.record, not follower)
                if not complete and record.error_type is None:
                    record.status, record.error_type = 499, "client_disconnected"
                finish(record)

            if follower:
                settle()
            else:  # the leader pays for the whole call: once it is over (at once, unless others still follow it)
                flight.when_done(settle)

    # the shared call -------------------------------------------------------------------------
    async def _work(self, upstream: Upstream, key: str, ttl_s: int, flight: Flight[Answer]) -> None:
        outcome = await upstream.complete()
        content, reply, record = outcome[0], outcome[1], upstream.record
        if reply is not None:
            answer.captured(record, reply.data, content)
        flight.finish(outcome)
        if ttl_s and reply is not None and record.usage is not None:
            await self._put(key, entry.encode(reply.data, record.usage, record.priced), ttl_s)

    async def _stream_work(self, upstream: Upstream, key: str, ttl_s: int, flight: Flight[Answer]) -> None:
        relay = await upstream.stream()
        assembler = Assembler()
        try:
            async for chunk in relay:
                assembler.feed(chunk)
                flight.publish(chunk)
        finally:
            await relay.aclose()
        record = upstream.record
        final = assembler.final()
        if final is not None:
            answer.captured(record, final)
        flight.finish()
        if ttl_s and final is not None and record.usage is not None and record.error_type is None:
            await self._put(key, entry.encode(final, record.usage, record.priced), ttl_s)

    async def _put(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            await self.store.set(key, value, ttl_s)
        except CacheUnavailable:
            self.metrics.cache_errors.labels("set").inc()


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


async def _replay(events: bytes, record: Record, finish: Finish) -> AsyncGenerator[bytes, None]:
    try:
        yield events
    finally:
        finish(record)
