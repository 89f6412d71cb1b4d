"""The ASGI app: `create_app(config)` wires the gateway's parts; the lifespan opens and closes them.

`Gateway` holds every live object (policies, catalog, connection pool, metrics) and its methods are
the endpoints, so nothing lives in module globals and a test can build as many apps as it likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.cache.store import open_store
from gateway.catalog import Catalog, ModelRoute, build_catalog
from gateway.config import Config, holder
from gateway.config.policies import PolicySet, Principal
from gateway.errors import BadRequest, GatewayError, NotFound, PermissionDenied, Unavailable
from gateway.limits.store import open_limits
from gateway.metrics import Metrics
from gateway.pipeline import dispatch
from gateway.pipeline.auth import AdminScope, authenticate, authenticate_admin, require_tools
from gateway.pipeline.body import parse_json, read_body, validate
from gateway.pipeline.limit import Limiter
from gateway.pipeline.record import Record
from gateway.pipeline.reuse import Reuse
from gateway.pipeline.route import Attempts, pick_model
from gateway.prompts.admin import PromptAdmin
from gateway.prompts.resolve import apply as apply_prompt
from gateway.prompts.resolve import referenced
from gateway.prompts.service import PromptService
from gateway.providers.base import Operation, Reply, StreamState
from gateway.routing import RetryBudget
from gateway.streaming import JSONAnswer, SSEResponse
from gateway.traces import context as tracecontext
from gateway.traces.admin import TraceAdmin
from gateway.traces.sink import TraceSink
from gateway.traces.writer import WriterProcess, settings_from
from gateway.upstream import Pool

log = logging.getLogger("gateway")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
JSON = "application/json"


def request_id(headers: Mapping[str, str]) -> str:
    """The client's `x-request-id` if it is sensible, else a new one: 32 hex digits, the first 12 the
    time in ms (as in a UUIDv7), the rest random. Ids made here sort by time, so the trace store's
    `request_id` index grows at its end; random ids dirtied a random index page per row, the largest
    share of an insert once the store holds rows (loadtests/RESULTS.md)."""
    given = headers.get("x-request-id")
    return given if given and _REQUEST_ID.match(given) else f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


def header_dict(request: Request) -> dict[str, str]:
    """The request's headers as a plain dict, built once: Starlette's `Headers` scans and decodes the
    raw list on every lookup (and raises KeyError inside `get` for each absent one), and a proxied
    request looks up about eight, most of them absent. ASGI header names are already lower-case."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}


def error_response(exc: GatewayError, rid: str) -> Response:
    return Response(exc.json(), exc.status, headers={"x-request-id": rid, **exc.headers()}, media_type=JSON)


Live = holder.Live[Attempts, Reuse]


class Gateway:
    def __init__(self, config: Config, trace_writer: str | None = None) -> None:
        self.config = config  # as started: [server], [state] and [telemetry] take effect at a restart
        self.trace_settings = settings_from(config)
        self.capture = config.file.telemetry.capture_content
        self.trace_admin = TraceAdmin(self.trace_settings.store_url)
        self.traces: TraceSink | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._policy_watch: asyncio.Task[None] | None = None
        self._trace_writer = trace_writer  # the supervisor's writer, with --workers N; else this process starts one
        self._writer: WriterProcess | None = None
        self.pool = Pool(config.file.server.upstream_max_connections)
        self.metrics = Metrics(frozenset())  # its model names are set by `_serving`, for each catalog
        state = config.file.state
        up = self.metrics.limits_backend_up
        limits = open_limits(state.limits, state.limits_timeout_ms / 1000, lambda ok: up.set(1 if ok else 0))
        self.limiter = Limiter(limits, self.metrics, state.rate_limits_on_outage == "open", state.budgets_on_outage == "open")
        self.max_body = config.file.server.max_body_bytes
        self.draining = False
        self.max_in_flight = config.file.server.max_in_flight
        self.keepalive_s = config.file.server.sse_keepalive_s
        self.budget = RetryBudget()
        self.cache_store = open_store(config.file.state.cache)
        self.holder = holder.ConfigHolder(config, lambda c: build_catalog(c, self.pool), self._serving)
        self.prompts = PromptService(config)
        self.prompt_admin = PromptAdmin(self.prompts, lambda: self.live.policies, self.max_body)

    def _serving(self, config: Config, catalog: Catalog) -> tuple[Attempts, Reuse]:
        """What the request path builds for each catalog (at start and when a reload changes it)."""
        self.metrics.models = frozenset(catalog.models)
        attempts = Attempts(catalog, self.budget)
        return attempts, Reuse(config, self.cache_store, self.metrics, attempts)

    @property
    def live(self) -> Live:
        return self.holder.live

    @property
    def policies(self) -> PolicySet:
        return self.live.policies

    @property
    def catalog(self) -> Catalog:
        return self.live.catalog

    # lifecycle -------------------------------------------------------------------------------
    async def _refresh_gauges(self) -> None:
        while True:
            self.metrics.set_in_flight(self.budget.requests)
            await asyncio.sleep(1.0)

    async def startup(self) -> None:
        await self.pool.open()
        await self._open_traces()
        await self.prompts.start()
        self._gauges = asyncio.get_running_loop().create_task(self._refresh_gauges())
        self._policy_watch = asyncio.get_running_loop().create_task(self.holder.watch())
        if not self.limiter.store.shared and self.config.file.server.workers > 1:
            log.warning("limits are counted per worker process ([state] limits = memory): use redis:// to share them")
        if self.policies.open is not None:
            log.warning(
                "OPEN MODE ([policies] open = true): requests without a key listed in %s are admitted as the open principal, "
                "with every model and no limits; the admin API still needs an admin key from a policy file",
                self.config.path(self.config.file.policies.dir),
            )

    async def shutdown(self) -> None:
        for task in (self._gauges, self._policy_watch):
            if task is not None:
                task.cancel()
        await self.prompts.stop()
        await self.pool.close()
        await self.cache_store.close()
        await self.limiter.store.close()
        self.metrics.flush()
        await self._close_traces()

    async def _open_traces(self) -> None:
        settings = self.trace_settings
        if self._trace_writer is None:
            self._writer = WriterProcess(settings)
        address = self._trace_writer or self._writer.address  # type: ignore[union-attr]
        self.traces = TraceSink(address, settings.queue_size, bool(settings.otlp_endpoint))
        await self.traces.open()
        self.metrics.trace_totals = self._trace_totals

    def _trace_totals(self) -> tuple[dict[str, Any], tuple[int, int]]:
        assert self.traces is not None
        return self.traces.totals, self.traces.dropped_here()

    async def _close_traces(self) -> None:
        """Flush every record to the writer; the one this process started then drains and exits."""
        if self.traces is not None:
            await self.traces.close()
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.stop, self.trace_settings.drain_timeout_s)

    # stages ----------------------------------------------------------------------------------
    def _admit(self, principal: Principal, model: str, catalog: Catalog) -> ModelRoute:
        route = catalog.models.get(model)
        if route is None:
            raise NotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model", code="model_not_found")
        if model not in principal.models:
            raise PermissionDenied(f"This key may not use the model `{model}`.", param="model", code="model_not_allowed")
        return route.within(principal.models)  # rules and fallbacks to models the team may not use are cut

    def _apply_prompt(self, body: dict[str, Any], principal: Principal, op: Operation, record: Record) -> dict[str, Any]:
        body, resolved = apply_prompt(body, self.prompts.registry, principal.prompts, op)
        version = resolved.version
        record.prompt_id, record.prompt_version, record.prompt_label, record.prompt_hash = (
            resolved.prompt_id,
            version.number,
            resolved.label,
            version.hash,
        )
        return body

    def _headers(self, rid: str, record: Record) -> dict[str, str]:
        headers = {
            "x-request-id": rid,
            "x-gateway-target": record.target or "",
            "x-gateway-cache": "bypass",
            "x-gateway-overhead-ms": f"{record.mark_overhead(time.perf_counter()):.2f}",
        }
        if record.prompt_id is not None:
            headers["x-gateway-prompt"] = f"{record.prompt_id}@{record.prompt_version}"
        if record.redacted:
            headers["x-gateway-redacted"] = ",".join(f"{kind}={n}" for kind, n in sorted(record.redacted.items()))
        return headers

    def _finish(self, record: Record) -> None:
        self.budget.requests -= 1
        record.close()
        if record.lease is not None:
            self.limiter.settle(record.lease, record)
            record.lease = None
        self.metrics.observe(record)
        if self.traces is not None:
            self.traces.put(record)
        if record.status >= 500:
            log.warning("request %s failed: %s %s (target %s)", record.request_id, record.status, record.error_type, record.target)

    def _begin(self, headers: Mapping[str, str], op: Operation, t0: float) -> Record:
        record = Record(request_id(headers), op.value, time.time(), t0)
        tracecontext.start(record, headers.get("traceparent"))
        return record

    def _answered(self, record: Record, reply: Reply, content: bytes) -> None:
        record.response_id, record.response_model = reply.data.get("id"), reply.data.get("model")
        if record.capture == "full":
            record.response_json = content.decode()

    def _stream_done(self, record: Record, state: StreamState) -> None:
        record.response_id, record.response_model = state.response_id, state.response_model
        if record.capture == "full":
            record.response_text = state.text
        self._finish(record)

    async def _admission(
        self, request: Request, headers: Mapping[str, str], op: Operation, record: Record, live: Live
    ) -> tuple[Principal, dict[str, Any], ModelRoute]:
        """Auth, body, prompt, permissions and routing rules: who asks for what, served by which model."""
        policies = live.policies
        principal = authenticate(headers, policies)
        record.key_name, record.team, record.policy_version = principal.key_name, principal.team, policies.version
        record.capture = principal.capture or self.capture
        raw = await read_body(request, self.max_body, headers.get("content-length"))
        body = parse_json(raw)
        as_sent = True  # is the body still the client's (for the trace to keep its text)?
        if referenced(body):
            body = self._apply_prompt(body, principal, op, record)
            as_sent = False
        record.model = validate(body, op.value)
        if principal.tools is not None and body.get("tools"):
            require_tools(body["tools"], principal.tools)
        guard = principal.guard
        if guard is not None:  # deny rules, then redaction: before the body is cached, traced or sent
            record.redacted = await guard.screen_async(body, len(raw)) or None
            as_sent = as_sent and record.redacted is None
        record.request_body = body
        if as_sent and record.capture == "full":
            record.request_json = raw.decode()
        route = self._admit(principal, record.model, live.catalog)
        if guard is not None and guard.max_request_tokens is not None:
            counted = await self.limiter.count(op, body, route)
            if counted > guard.max_request_tokens:
                raise BadRequest(
                    f"The request has {counted} prompt tokens, over this key's guardrail cap of {guard.max_request_tokens} "
                    "(max_request_tokens).",
                    param="messages" if op is Operation.CHAT else "prompt" if op is Operation.COMPLETION else "input",
                    code="request_tokens_exceeded",
                )
        if route.rules:
            route, record.route_rule = pick_model(live.catalog, route, body, headers.get("x-gateway-route-tag"), principal.models)
        return principal, body, route

    async def proxy(self, request: Request, op: Operation) -> Response:
        t0 = time.perf_counter()
        live = self.live  # read once: a reload mid-request cannot mix two configs or policy sets
        headers = header_dict(request)
        record = self._begin(headers, op, t0)
        rid = record.request_id
        streaming = False
        self.budget.requests += 1
        try:
            if self.budget.requests > self.max_in_flight:
                raise Unavailable("The gateway is at capacity; retry shortly.", code="overloaded", retry_after=1)
            principal, body, route = await self._admission(request, headers, op, record, live)
            if principal.quota is not None:
                record.lease = await self.limiter.admit(principal, op, body, route, live.catalog)
            if op is Operation.EMBEDDINGS or route.name in live.reuse.cached:  # cache, coalescing, batching
                reused = await live.reuse.serve(
                    headers, principal, op, body, route, record, lambda: self._headers(rid, record), lambda: self._finish(record)
                )
                if reused is not None:
                    streaming = isinstance(reused, SSEResponse)
                    return reused
            if body.get("stream"):
                if op is Operation.EMBEDDINGS:
                    raise BadRequest("Embeddings cannot be streamed.", param="stream")
                record.stream = True
                deployment, stream = await live.attempts.serve(op, body, route, record, streaming=True)
                stream.deadline = t0 + route.deadline_s
                record.ttft_s = time.perf_counter() - t0
                closing = dispatch.closing_usage(op, body, deployment, record)
                charge = dispatch.charge_consumed(op, body, deployment, record)
                headers = self._headers(rid, record)
                streaming = True
                relay = stream.relay(closing, lambda: self._stream_done(record, stream.state), charge)
                return SSEResponse(relay, headers, self.keepalive_s, on_stalled=record.mark_stalled)
            deployment, (content, reply) = await live.attempts.serve(op, body, route, record, streaming=False)
            self._answered(record, reply, content)
            headers = self._headers(rid, record)
            if reply.usage is not None and reply.usage.estimated:
                headers["x-gateway-usage"] = "estimated"
            if record.priced:
                headers["x-gateway-cost-usd"] = f"{record.cost_usd:.10f}"
            return JSONAnswer(content, headers)
        except GatewayError as exc:
            record.status, record.error_type = exc.status, exc.error_type
            response = error_response(exc, rid)
            if record.prompt_id is not None:
                response.headers["x-gateway-prompt"] = f"{record.prompt_id}@{record.prompt_version}"
            return response
        finally:
            if not streaming:
                if record.unanswered is not None:  # sent, never answered: the provider bills the prompt
                    await dispatch.charge_unanswered(record)
                self._finish(record)

    # endpoints -------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self.proxy(request, Operation.CHAT)

    async def completions(self, request: Request) -> Response:
        return await self.proxy(request, Operation.COMPLETION)

    async def embeddings(self, request: Request) -> Response:
        return await self.proxy(request, Operation.EMBEDDINGS)

    async def models(self, request: Request) -> Response:
        rid = request_id(request.headers)
        live = self.live
        try:
            principal = authenticate(request.headers, live.policies)
        except GatewayError as exc:
            return error_response(exc, rid)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "llm-gateway"}
            for name in live.catalog.models
            if name in principal.models
        ]
        return Response(orjson.dumps({"object": "list", "data": data}), headers={"x-request-id": rid}, media_type=JSON)

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    async def readyz(self, request: Request) -> Response:
        if self.draining:
            exc = Unavailable("The gateway is draining.", code="draining", retry_after=1)
            return Response(exc.json(), 503, headers=exc.headers(), media_type=JSON)
        body = {"status": "ready", "config": self.live.config.hash, "policies": self.policies.version}
        return Response(orjson.dumps(body), media_type=JSON)

    async def metrics_endpoint(self, request: Request) -> Response:
        self.metrics.set_in_flight(self.budget.requests)
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def admin_policies(self, request: Request) -> Response:
        return await self._admin(request, lambda scope: self._policy_status(), whole_gateway=True)

    async def admin_reload(self, request: Request) -> Response:
        return await self._admin(request, lambda scope: self._reload(), whole_gateway=True)

    async def admin_traces(self, request: Request) -> Response:
        return await self._admin(request, lambda scope: self.trace_admin.list(request.query_params, scope.team))

    async def admin_trace(self, request: Request) -> Response:
        rid, query = request.path_params["request_id"], request.query_params
        return await self._admin(request, lambda scope: self.trace_admin.get(rid, query, scope.team))

    async def _admin(
        self, request: Request, action: Callable[[AdminScope], Awaitable[dict[str, Any]]], whole_gateway: bool = False
    ) -> Response:
        """An admin key from a policy file (never open mode); `whole_gateway` endpoints need a global one,
        the others are given the caller's scope, which confines a team admin to its team's objects."""
        rid = request_id(request.headers)
        try:
            scope = authenticate_admin(request.headers, self.policies)
            if whole_gateway:
                scope.require_global()
            return Response(orjson.dumps(await action(scope)), headers={"x-request-id": rid}, media_type=JSON)
        except GatewayError as exc:
            return error_response(exc, rid)

    async def _policy_status(self) -> dict[str, Any]:
        return self.holder.status()

    async def _reload(self) -> dict[str, Any]:
        await self.holder.reload()
        return self.holder.status()


async def not_found(request: Request, exc: Exception) -> Response:
    error = NotFound(f"Unknown path {request.url.path!r}.", code="unknown_url")
    return Response(error.json(), 404, media_type=JSON)


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    error = GatewayError(f"Method {request.method} is not allowed on {request.url.path!r}.", status=405, code="method_not_allowed")
    error.type = "invalid_request_error"
    return Response(error.json(), 405, media_type=JSON)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    error = GatewayError("The gateway hit an internal error.", code="internal_error")
    return Response(error.json(), 500, media_type=JSON)


class GatewayApp(Starlette):
    """Starlette, with the OpenAI endpoints called straight from the ASGI scope.

    Those endpoints catch their own errors and answer OpenAI-shaped bodies, so Starlette's router and
    its two exception middlewares only add cost to them (~6% of a proxied request, measured). Every
    other path, and the lifespan, goes through Starlette as usual.
    """

    fast: dict[str, Callable[[Request], Awaitable[Response]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.fast.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self
                request = Request(scope, receive)
                try:
                    response = await endpoint(request)
                except Exception as exc:
                    response = await internal_error(request, exc)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(config: Config, trace_writer: str | None = None) -> Starlette:
    gateway = Gateway(config, trace_writer)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.startup()
        try:
            yield
        finally:
            await gateway.shutdown()

    routes = [
        Route("/v1/chat/completions", gateway.chat, methods=["POST"]),
        Route("/v1/completions", gateway.completions, methods=["POST"]),
        Route("/v1/embeddings", gateway.embeddings, methods=["POST"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/readyz", gateway.readyz, methods=["GET"]),
        Route("/metrics", gateway.metrics_endpoint, methods=["GET"]),
        Route("/admin/policies", gateway.admin_policies, methods=["GET"]),
        Route("/admin/reload", gateway.admin_reload, methods=["POST"]),
        Route("/admin/traces", gateway.admin_traces, methods=["GET"]),
        Route("/admin/traces/{request_id}", gateway.admin_trace, methods=["GET"]),
        *gateway.prompt_admin.routes(),
    ]
    app = GatewayApp(
        routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: method_not_allowed, Exception: internal_error}
    )
    app.fast = {"/v1/chat/completions": gateway.chat, "/v1/completions": gateway.completions, "/v1/embeddings": gateway.embeddings}
    app.state.gateway = gateway
    return app
