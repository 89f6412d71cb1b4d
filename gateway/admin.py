"""The admin API: every endpoint runs through `endpoint`, which checks the caller, runs the handler
and answers its JSON or its error, each with `x-request-id`.

The caller needs an admin key from a policy file, always (open mode makes nobody an admin:
pipeline/auth.py). `whole_gateway` endpoints (policies, reload) need a global admin key; the others
are given the caller's scope, which confines a team admin to its team's objects (traces here, prompts
in prompts/admin.py), where another team's object answers 404 like a missing one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.config.holder import ConfigHolder
from gateway.config.policies import PolicySet
from gateway.errors import GatewayError
from gateway.pipeline.auth import AdminScope, authenticate_admin
from gateway.pipeline.record import request_id
from gateway.responses import error_response, json_response
from gateway.traces.admin import TraceAdmin

Handler = Callable[[Request, AdminScope], Awaitable[tuple[int, Any]]]  # -> (status, JSON body)
Endpoint = Callable[[Request], Awaitable[Response]]


def endpoint(policies: Callable[[], PolicySet], handler: Handler, whole_gateway: bool = False) -> Endpoint:
    async def run(request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            scope = authenticate_admin(request.headers, policies())
            if whole_gateway:
                scope.require_global()
            status, body = await handler(request, scope)
        except GatewayError as exc:
            return error_response(exc, rid)
        return json_response(body, rid, status)

    return run


def routes(holder: ConfigHolder[Any, Any], traces: TraceAdmin) -> list[Route]:
    """/admin/policies, /admin/reload and the trace endpoints (the prompt ones: PromptAdmin.routes)."""

    def policies() -> PolicySet:
        return holder.live.policies

    async def status(request: Request, scope: AdminScope) -> tuple[int, Any]:
        return 200, holder.status()

    async def reload(request: Request, scope: AdminScope) -> tuple[int, Any]:
        await holder.reload()
        return 200, holder.status()

    async def trace_list(request: Request, scope: AdminScope) -> tuple[int, Any]:
        return 200, await traces.list(request.query_params, scope.team)

    async def trace_get(request: Request, scope: AdminScope) -> tuple[int, Any]:
        return 200, await traces.get(request.path_params["request_id"], request.query_params, scope.team)

    return [
        Route("/admin/policies", endpoint(policies, status, whole_gateway=True), methods=["GET"]),
        Route("/admin/reload", endpoint(policies, reload, whole_gateway=True), methods=["POST"]),
        Route("/admin/traces", endpoint(policies, trace_list), methods=["GET"]),
        Route("/admin/traces/{request_id}", endpoint(policies, trace_get), methods=["GET"]),
    ]
