"""The request's journey, in order: the one place that says what happens to a proxied request.

    auth -> body -> prompt -> validate -> tools -> guardrails -> model (known, allowed)
    -> token cap -> route (rules) -> limits -> reuse (cache, coalescing, batching)
    -> attempts -> answer -> finish (settle, metrics, trace)

`Journey.run` is the whole of it for chat, completions and embeddings; `_admission` holds the stages
up to routing (who asks for what, served by which model). Limits come after routing: a budget
reserves at the prices of the model that will serve and its fallbacks. Each stage is a function or object of its
own module in this package, given what it needs and returning what it found; the record
(`record.py`) collects what the trace, the metrics and the limits' settlement read at the end.

Where a request may end: any stage raises a `GatewayError`, answered as an OpenAI-shaped error
(`answer.error`); the reuse stage answers hits, coalesced calls and embeddings itself (through
`answer.py`, as the direct path does); otherwise attempts produce a complete answer or an opened
stream. The finish stage runs once per request: here for complete answers and errors, and at the end
of the relay for streams. A request that sent an attempt and got no answer is charged its prompt
first (`dispatch.charge_unanswered`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.catalog import Catalog, ModelRoute
from gateway.config import Config
from gateway.config.holder import ConfigHolder, Live
from gateway.config.policies import Principal
from gateway.errors import BadRequest, GatewayError, NotFound, PermissionDenied, Unavailable
from gateway.guardrails import Guardrails
from gateway.pipeline import answer, dispatch
from gateway.pipeline.auth import authenticate, require_tools
from gateway.pipeline.body import parse_json, read_body, validate
from gateway.pipeline.finish import Finish
from gateway.pipeline.limit import Limiter
from gateway.pipeline.record import Record, begin
from gateway.pipeline.reuse import Reuse
from gateway.pipeline.route import Attempts, pick_model
from gateway.pipeline.usage import count_prompt
from gateway.prompts.resolve import apply as apply_prompt
from gateway.prompts.resolve import referenced
from gateway.prompts.service import PromptService
from gateway.providers.base import Operation
from gateway.streaming import SSEResponse
from gateway.tokens import Tokenizer


def header_dict(request: Request) -> dict[str, str]:
    """The request's headers as a plain dict, built once: Starlette's `Headers` scans and decodes the
    raw list on every lookup (and raises KeyError inside `get` for each absent one), and a proxied
    request looks up about eight, most of them absent. ASGI header names are already lower-case."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}


class Journey:
    def __init__(
        self,
        holder: ConfigHolder[Attempts, Reuse],
        prompts: PromptService,
        limiter: Limiter,
        finish: Finish,
        config: Config,
        tokenizer: Tokenizer,
    ) -> None:
        server = config.file.server  # as started: [server] takes effect at a restart
        self.holder, self.prompts, self.limiter, self.finish = holder, prompts, limiter, finish
        self.tokenizer = tokenizer  # the process's one (gateway/tokens.py): each record counts with it
        self.budget = finish.budget
        self.max_body, self.max_in_flight, self.keepalive_s = server.max_body_bytes, server.max_in_flight, server.sse_keepalive_s
        self.capture = config.file.telemetry.capture_content

    async def run(self, request: Request, op: Operation) -> Response:
        t0 = time.perf_counter()
        live = self.holder.live  # read once: a reload mid-request cannot mix two configs or policy sets
        headers = header_dict(request)
        record = begin(headers, op, t0, self.tokenizer)
        streaming = False  # once a stream's response is returned, its relay finishes the request
        self.budget.requests += 1
        try:
            if self.budget.requests > self.max_in_flight:
                raise Unavailable("The gateway is at capacity; retry shortly.", code="overloaded", retry_after=1)
            principal, body, route = await self._admission(request, headers, op, record, live)
            if principal.quota is not None:  # limits
                record.lease = await self.limiter.admit(principal, op, body, route, live.catalog, record)
            if op is Operation.EMBEDDINGS or route.name in live.reuse.cached:  # reuse: cache, coalescing, batching
                reused = await live.reuse.serve(headers, principal, op, body, route, record, self.finish)
                if reused is not None:
                    streaming = isinstance(reused, SSEResponse)
                    return reused
            if body.get("stream"):  # attempts, then the answer
                if op is Operation.EMBEDDINGS:
                    raise BadRequest("Embeddings cannot be streamed.", param="stream")
                record.stream = True
                stream = await live.attempts.stream(op, body, route, record)
                streaming = True
                return answer.stream(record, stream.relay(self.finish), self.keepalive_s, record.mark_stalled)
            done = await live.attempts.complete(op, body, route, record)
            answer.captured(record, done.reply.data, done.content)
            return answer.json(record, done.content, done.reply)
        except GatewayError as exc:
            return answer.error(record, exc)
        finally:
            if not streaming:  # finish
                if record.unanswered is not None:  # sent, never answered: the provider bills the prompt
                    await dispatch.charge_unanswered(record)
                self.finish(record)

    async def _admission(
        self, request: Request, headers: Mapping[str, str], op: Operation, record: Record, live: Live[Attempts, Reuse]
    ) -> tuple[Principal, dict[str, Any], ModelRoute]:
        """Auth, body, prompt, validation, tools, guardrails, the model and the token cap, then the
        routing rules: who asks for what, served by which model."""
        principal = authenticate(headers, live.policies)
        record.key_name, record.team, record.policy_version = principal.key_name, principal.team, live.policies.version
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
        route = allowed(principal, record.model, live.catalog)
        if guard is not None and guard.max_request_tokens is not None:
            await token_cap(guard, op, body, route, record)
        if route.rules:
            route, record.route_rule = pick_model(live.catalog, route, body, headers.get("x-gateway-route-tag"), principal.models)
        return principal, body, route

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


def allowed(principal: Principal, model: str, catalog: Catalog) -> ModelRoute:
    """The requested model, if it exists and the key may use it, as the team sees it: rules and
    fallbacks leading to models the team may not use are cut."""
    route = catalog.models.get(model)
    if route is None:
        raise NotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model", code="model_not_found")
    if model not in principal.models:
        raise PermissionDenied(f"This key may not use the model `{model}`.", param="model", code="model_not_allowed")
    return route.within(principal.models)


async def token_cap(guard: Guardrails, op: Operation, body: dict[str, Any], route: ModelRoute, record: Record) -> None:
    """The guardrail's `max_request_tokens`: the prompt counted (once, kept on the record) for the requested model."""
    counted = await count_prompt(op, body, route.deployments[0].model, record)
    if guard.max_request_tokens is not None and counted > guard.max_request_tokens:
        raise BadRequest(
            f"The request has {counted} prompt tokens, over this key's guardrail cap of {guard.max_request_tokens} (max_request_tokens).",
            param="messages" if op is Operation.CHAT else "prompt" if op is Operation.COMPLETION else "input",
            code="request_tokens_exceeded",
        )
