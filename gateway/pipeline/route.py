"""From the requested model to a served answer: routing rules, then attempts, retries and fallbacks.

`pick_model` applies a model's ordered rules (estimated prompt tokens, tools, images, the
`x-gateway-route-tag` header) and returns the model that will serve, naming the rule that fired; rules
are not chained. `Attempts.complete` (a whole answer) and `Attempts.stream` (a stream opened up to its
first bytes) then try the model's deployments, chosen by its `Balancer`, up to `retries` more times
with full-jitter backoff (or the provider's Retry-After when the deadline allows), and then each
fallback model in order, as long as the error is retryable and the process-wide `RetryBudget`
allows another retry. All of this happens before the first byte reaches the client;
every attempt is recorded, and the balancer learns from each outcome (failures lead to ejection).

Both work on the team's view of a route (`ModelRoute.within`, taken at admission): a rule or fallback
leading to a model the team may not use is not in it, so it is never matched, tried or traced.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol, TypeVar

from gateway.catalog import Catalog, ModelRoute
from gateway.config.schema import RuleSection
from gateway.errors import GatewayError, Unavailable, UpstreamTimeout
from gateway.pipeline import dispatch
from gateway.pipeline.record import Attempt, Record
from gateway.providers.base import Deployment, Operation
from gateway.routing import RetryBudget, backoff

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


def estimated_tokens(body: dict[str, Any]) -> int:
    """Characters / 4: cheap, tokenizer-free, good enough to pick a model size."""
    chars = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    return chars // 4


def has_images(body: dict[str, Any]) -> bool:
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            return True
    return False


def _matches(rule: RuleSection, body: dict[str, Any], tag: str | None) -> bool:
    if rule.route_tag is not None and rule.route_tag != tag:
        return False
    if rule.tools is not None and rule.tools != bool(body.get("tools")):
        return False
    if rule.images is not None and rule.images != has_images(body):
        return False
    if rule.max_prompt_tokens is not None or rule.min_prompt_tokens is not None:
        tokens = estimated_tokens(body)
        if rule.max_prompt_tokens is not None and tokens > rule.max_prompt_tokens:
            return False
        if rule.min_prompt_tokens is not None and tokens < rule.min_prompt_tokens:
            return False
    return True


def pick_model(
    catalog: Catalog, route: ModelRoute, body: dict[str, Any], tag: str | None, allowed: frozenset[str]
) -> tuple[ModelRoute, str | None]:
    """`route` is already the team's view (`ModelRoute.within`): its rules lead only to models the
    team may use. The picked model's fallbacks are cut to `allowed` the same way."""
    for rule in route.rules:
        if _matches(rule, body, tag):
            return catalog.models[rule.model].within(allowed), rule.name
    return route, None


def _deadline(record: Record) -> UpstreamTimeout:
    error = UpstreamTimeout(f"model `{record.model}` did not answer within its deadline", code="deadline_exceeded")
    error.retryable = False  # no time is left for another attempt
    return error


class _Call(Protocol[T_co]):
    """One attempt's call to a deployment: `dispatch.complete` or `dispatch.open_stream`."""

    def __call__(
        self, op: Operation, body: dict[str, Any], deployment: Deployment, record: Record, first_byte_s: float, deadline: float, /
    ) -> Awaitable[T_co]: ...


class Attempts:
    """A model's deployments, retries and fallbacks, tried until one answers: `complete` for a whole
    answer, `stream` for a stream opened up to its first bytes (its deadline set from the route's)."""

    def __init__(self, catalog: Catalog, budget: RetryBudget, rng: random.Random | None = None) -> None:
        self.catalog = catalog
        self.budget = budget
        self.rng = rng or random.Random()

    # plain functions returning the loop's coroutine: awaiting them costs no frame of their own
    def complete(self, op: Operation, body: dict[str, Any], route: ModelRoute, record: Record) -> Coroutine[Any, Any, dispatch.Completion]:
        return self._serve(op, body, route, record, dispatch.complete)

    def stream(self, op: Operation, body: dict[str, Any], route: ModelRoute, record: Record) -> Coroutine[Any, Any, dispatch.Stream]:
        return self._serve(op, body, route, record, dispatch.open_stream)

    async def _serve(self, op: Operation, body: dict[str, Any], route: ModelRoute, record: Record, call: _Call[T]) -> T:
        deadline = record.t0 + route.deadline_s
        user = body.get("user") if isinstance(body.get("user"), str) else None
        last: GatewayError | None = None
        for model in (route, *(self.catalog.models[name] for name in route.fallbacks)):
            tried: set[int] = set()
            for retry in range(model.retries + 1):
                remaining = deadline - time.perf_counter()
                if record.attempts and not self.budget.allow():
                    raise last or Unavailable("retry budget exhausted", code="retry_budget", retry_after=1)
                if retry and last is not None:
                    delay = backoff(retry, last.retry_after, remaining, self.rng)
                    if delay is None:
                        break  # the provider's Retry-After does not fit the deadline: next model
                    await asyncio.sleep(delay)
                    remaining -= delay
                index = model.balancer.choose(user, tried)
                if index is None and tried:
                    index = model.balancer.choose(user)  # every target tried once: any healthy one again
                if index is None:
                    break  # all ejected
                try:
                    return await self._attempt(op, body, model, index, record, call, remaining, deadline)
                except GatewayError as exc:
                    if not exc.retryable:
                        raise
                    last = exc
                    tried.add(index)
        raise last or Unavailable(f"no healthy target for model `{route.name}`", code="no_healthy_target", retry_after=5)

    async def _attempt(
        self,
        op: Operation,
        body: dict[str, Any],
        model: ModelRoute,
        index: int,
        record: Record,
        call: _Call[T],
        remaining: float,
        deadline: float,
    ) -> T:
        deployment = model.deployments[index]
        started = time.perf_counter()
        attempt = Attempt(deployment.label, model.name, started - record.t0, server_address=deployment.transport.address)
        is_retry = bool(record.attempts)
        record.attempts.append(attempt)
        self.budget.retries += is_retry
        # the deadline bounds the wait for the first byte (one timer per attempt); after that the
        # provider's idle timeout bounds each silence, and streams check the deadline per chunk
        deadline_first = remaining < deployment.first_byte_s
        try:
            if remaining <= 0:
                raise _deadline(record)
            result = await call(op, body, deployment, record, min(remaining, deployment.first_byte_s), deadline)
        except GatewayError as exc:
            error = _deadline(record) if deadline_first and exc.error_type == "first_byte_timeout" else exc
            self._settle(model, index, attempt, started, error)
            if error is exc:
                raise
            raise error from None
        except BaseException:
            model.balancer.finished(index, ok=True)  # cancelled (client gone, shutdown): not the target's fault
            raise
        finally:
            self.budget.retries -= is_retry
        self._settle(model, index, attempt, started, None)
        return result

    @staticmethod
    def _settle(model: ModelRoute, index: int, attempt: Attempt, started: float, error: GatewayError | None) -> None:
        attempt.latency_s = time.perf_counter() - started
        if error is None:
            attempt.status = 200
            model.balancer.finished(index, ok=True, latency_s=attempt.latency_s)
            return
        attempt.status, attempt.error_type = error.status, error.error_type
        model.balancer.finished(index, ok=not error.retryable)
