"""The ASGI app: `create_app(config)` wires the gateway's parts; the lifespan opens and closes them.

`Gateway` holds every live object (policies, catalog, connection pool, metrics) and its methods are
the endpoints, so nothing lives in module globals and a test can build as many apps as it likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import admin
from gateway.cache.store import open_store
from gateway.catalog import Catalog, build_catalog
from gateway.config import Config, holder
from gateway.config.policies import PolicySet
from gateway.errors import GatewayError, Unavailable
from gateway.limits.store import open_limits
from gateway.metrics import Metrics
from gateway.pipeline.auth import authenticate
from gateway.pipeline.finish import Finish
from gateway.pipeline.limit import Limiter
from gateway.pipeline.record import request_id
from gateway.pipeline.reuse import Reuse
from gateway.pipeline.route import Attempts
from gateway.pipeline.run import Journey
from gateway.prompts.admin import PromptAdmin
from gateway.prompts.service import PromptService
from gateway.providers.base import Operation
from gateway.responses import JSON, error_response, internal_error, json_response, method_not_allowed, not_found
from gateway.routing import RetryBudget
from gateway.tokens import Tokenizer
from gateway.traces.admin import TraceAdmin
from gateway.traces.sink import TraceSink
from gateway.traces.writer import WriterProcess, settings_from
from gateway.upstream import Pool

log = logging.getLogger("gateway")

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
        self.tokenizer = Tokenizer()  # the process's token counting and what it remembers (gateway/tokens.py)
        self.limiter = Limiter(
            limits, self.metrics, state.rate_limits_on_outage == "open", state.budgets_on_outage == "open", self.tokenizer
        )
        self.max_body = config.file.server.max_body_bytes
        self.draining = False
        self.max_in_flight = config.file.server.max_in_flight
        self.keepalive_s = config.file.server.sse_keepalive_s
        self.budget = RetryBudget()
        self.cache_store = open_store(config.file.state.cache)
        self.holder = holder.ConfigHolder(config, lambda c: build_catalog(c, self.pool), self._serving)
        self.prompts = PromptService(config)
        self.prompt_admin = PromptAdmin(self.prompts, lambda: self.live.policies, self.max_body)
        self.finish = Finish(self.budget, self.limiter, self.metrics)
        # the request path: pipeline/run.py
        self.journey = Journey(self.holder, self.prompts, self.limiter, self.finish, config, self.tokenizer)

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
        self.traces = self.finish.traces = TraceSink(address, settings.queue_size, bool(settings.otlp_endpoint))
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

    # endpoints -------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self.journey.run(request, Operation.CHAT)

    async def completions(self, request: Request) -> Response:
        return await self.journey.run(request, Operation.COMPLETION)

    async def embeddings(self, request: Request) -> Response:
        return await self.journey.run(request, Operation.EMBEDDINGS)

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
        return json_response({"object": "list", "data": data}, rid)

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    async def readyz(self, request: Request) -> Response:
        rid = request_id(request.headers)
        if self.draining:
            return error_response(Unavailable("The gateway is draining.", code="draining", retry_after=1), rid)
        return json_response({"status": "ready", "config": self.live.config.hash, "policies": self.policies.version}, rid)

    async def metrics_endpoint(self, request: Request) -> Response:
        self.metrics.set_in_flight(self.budget.requests)
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


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
        *admin.routes(gateway.holder, gateway.trace_admin),
        *gateway.prompt_admin.routes(),
    ]
    app = GatewayApp(
        routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: method_not_allowed, Exception: internal_error}
    )
    app.fast = {"/v1/chat/completions": gateway.chat, "/v1/completions": gateway.completions, "/v1/embeddings": gateway.embeddings}
    app.state.gateway = gateway
    return app
