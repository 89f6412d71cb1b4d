"""Admission against a principal's limits, and settling what a request reserved once it is over.

One call to the limits store per request admits it against every limit at once (rpm, tpm,
max_concurrent, budgets); see `gateway/limits/rules.py` for the arithmetic. What a request may
cost is reserved up front: tpm reserves its prompt tokens (counted with tiktoken), a budget its
worst-case cost (those prompt tokens plus its output cap times the choices it asks for, at the
highest price among the deployments that could serve it, fallbacks included). Without a cap the
output reserve is each deployment's `max_output_tokens` from its price, else 4096. A budget check
reserves at least one nano-dollar, so a spent budget admits nothing, whatever the request says it
may cost. `settle` charges the real figures.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

from gateway.catalog import Catalog, ModelRoute
from gateway.config.policies import Principal
from gateway.errors import BadRequest, RateLimited, Unavailable
from gateway.limits.quota import Limit, Quota
from gateway.limits.rules import MINUTE_MS, Check, Settlement, Verdict, nano_usd
from gateway.limits.store import LimitStore, LimitsUnavailable
from gateway.metrics import Metrics
from gateway.pipeline.record import Record
from gateway.pipeline.usage import count_prompt
from gateway.providers.base import Operation
from gateway.providers.shapes import choices, token_caps
from gateway.tokens import Tokenizer

log = logging.getLogger("gateway.limits")

DEFAULT_OUTPUT_RESERVE = 4096  # output tokens reserved per choice when nothing caps them and the price states no maximum
LEASE_GRACE_MS = 60_000  # a concurrency lease outlives the request's deadline by this much (then lapses)


@dataclass(slots=True)
class Lease:
    """What an admitted request holds, to be settled when it is over."""

    tpm: Limit | None = None
    tokens_reserved: int = 0
    concurrent: Limit | None = None
    lease: str = ""
    budgets: list[tuple[str, int]] = field(default_factory=list)  # (counter:period, nano-USD reserved)


@dataclass(frozen=True, slots=True)
class _Rule:
    reason: str  # the metric label
    code: str
    limit: Limit


class Limiter:
    def __init__(
        self, store: LimitStore, metrics: Metrics, rate_limits_fail_open: bool, budgets_fail_open: bool, tokenizer: Tokenizer
    ) -> None:
        self.store = store
        self.tokenizer = tokenizer
        self._metrics = metrics
        self._rate_open = rate_limits_fail_open
        self._budget_open = budgets_fail_open
        self._unpriced_said: set[str] = set()

    async def admit(
        self, principal: Principal, op: Operation, body: dict[str, Any], route: ModelRoute, catalog: Catalog, record: Record | None = None
    ) -> Lease | None:
        quota = principal.quota
        if quota is None:
            return None
        output = _output_tokens(quota, op, body)
        answers = choices(body, op)
        checks: list[Check] = []
        rules: list[_Rule] = []
        lease = Lease()
        if quota.rpm is not None:
            checks.append(Check("rate", quota.rpm.counter, quota.rpm.value, 1, MINUTE_MS))
            rules.append(_Rule("rpm", "rpm_exceeded", quota.rpm))
        prompt = await self.count(op, body, route, record) if quota.counts_tokens else 0
        if quota.tpm is not None:
            checks.append(Check("rate", quota.tpm.counter, quota.tpm.value, prompt, MINUTE_MS))
            rules.append(_Rule("tpm", "tpm_exceeded", quota.tpm))
            lease.tpm, lease.tokens_reserved = quota.tpm, prompt
        if quota.concurrent is not None:
            lease.lease = f"{random.getrandbits(64):016x}"
            lifetime = math.ceil(route.deadline_s * 1000) + LEASE_GRACE_MS
            checks.append(Check("conc", quota.concurrent.counter, quota.concurrent.value, 0, lifetime))
            rules.append(_Rule("concurrency", "concurrency_exceeded", quota.concurrent))
            lease.concurrent = quota.concurrent
        worst = 0
        if quota.day is not None or quota.month is not None:
            worst = max(1, nano_usd(self._worst_cost(route, catalog, prompt, output, answers)))  # never 0: see the docstring
            for budget, kind in ((quota.day, "day"), (quota.month, "month")):
                if budget is not None:
                    checks.append(Check(kind, budget.counter, budget.value, worst, 0))  # type: ignore[arg-type]
                    rules.append(_Rule("budget", "budget_exceeded", budget))
        if not checks:  # a max_tokens cap alone: nothing to count
            return None
        admission = asyncio.ensure_future(self.store.admit(checks, lease.lease))
        try:
            verdict = await asyncio.shield(admission)
        except asyncio.CancelledError:  # the client went away mid-admission: undo it once it is known
            admission.add_done_callback(lambda done: self._undo(done, lease, worst))
            raise
        except LimitsUnavailable:
            self._outage(rules)  # raises, unless this outage admits the request unchecked
            return None
        if not verdict.admitted:
            rule = rules[verdict.failed]
            self._metrics.rate_limited.labels(rule.reason).inc()
            raise RateLimited(_message(rule, verdict.retry_ms, prompt, worst), code=rule.code, retry_after=verdict.retry_ms / 1000)
        lease.budgets = [(key, worst) for key in verdict.periods]
        return lease

    def settle(self, lease: Lease, record: Record) -> None:
        used = record.usage.prompt_tokens + record.usage.completion_tokens if record.usage is not None else 0
        self._settle(lease, used, nano_usd(record.cost_usd or 0.0))

    def _settle(self, lease: Lease, used_tokens: int, spent_nano: int) -> None:
        settlements: list[Settlement] = []
        if lease.tpm is not None:
            settlements.append(Settlement("rate", lease.tpm.counter, lease.tpm.value, MINUTE_MS, used_tokens - lease.tokens_reserved))
        if lease.concurrent is not None:
            settlements.append(Settlement("conc", lease.concurrent.counter, 0, 0, 0, lease.lease))
        settlements.extend(Settlement("budget", key, held, spent_nano, 0) for key, held in lease.budgets)
        if settlements:
            self.store.settle(settlements)

    def _undo(self, admission: asyncio.Future[Verdict], lease: Lease, worst: int) -> None:
        """An admission whose request was cancelled while waiting for it: give back what it took."""
        if admission.cancelled() or admission.exception() is not None or not admission.result().admitted:
            return
        lease.budgets = [(key, worst) for key in admission.result().periods]
        self._settle(lease, 0, 0)

    def _outage(self, rules: list[_Rule]) -> None:
        budgets = any(r.reason == "budget" for r in rules)
        rates = any(r.reason != "budget" for r in rules)
        if (budgets and not self._budget_open) or (rates and not self._rate_open):
            self._metrics.limits_unchecked.labels("rejected").inc()
            raise Unavailable(
                "Limits cannot be checked right now (the limits backend is unavailable); retry shortly.",
                code="limits_unavailable",
                retry_after=1,
            )
        self._metrics.limits_unchecked.labels("admitted").inc()

    async def count(self, op: Operation, body: dict[str, Any], route: ModelRoute, record: Record | None = None) -> int:
        """The request's prompt tokens, counted with tiktoken for the route's first deployment (a large
        prompt in a worker thread), once per request: see `pipeline/usage.py`."""
        model = route.deployments[0].model
        if record is None:  # no request to keep the count on (a direct caller)
            record = Record("", op.value, 0.0, 0.0, tokenizer=self.tokenizer)
        return await count_prompt(op, body, model, record)

    def _worst_cost(self, route: ModelRoute, catalog: Catalog, prompt: int, output: int | None, answers: int) -> float:
        """The most the request may cost in USD: the prompt once, `answers` times the output cap (per
        deployment its longest answer when the request is uncapped), at the dearest deployment."""
        routes = [route, *(catalog.models[name] for name in route.fallbacks if name in catalog.models)]
        worst = 0.0
        for deployment in (d for r in routes for d in r.deployments):
            price = deployment.price
            if price is None:
                continue
            input_rate = max(price.input_per_million, price.cache_write_per_million or 0.0)
            longest = output if output is not None else price.max_output_tokens or DEFAULT_OUTPUT_RESERVE
            worst = max(worst, (prompt * input_rate + answers * longest * price.output_per_million) / 1_000_000)
        if worst == 0.0 and route.name not in self._unpriced_said:
            self._unpriced_said.add(route.name)
            log.warning("model %s has no price: its requests count as $0 against budgets", route.name)
        return worst


def _output_tokens(quota: Quota, op: Operation, body: dict[str, Any]) -> int | None:
    """The most output tokens one answer may hold, None when nothing caps it; enforces and fills in
    the team's cap. With both cap fields stated the larger counts: a provider may honour either."""
    if op is Operation.EMBEDDINGS:
        return 0
    caps = token_caps(body)
    cap = quota.max_tokens
    if cap is not None:
        for param, requested in caps.items():
            if requested > cap:
                message = f"{param} {requested} is over this key's cap of {cap} (max_tokens)."
                raise BadRequest(message, param=param, code="max_tokens_exceeded")
        if not caps:
            body["max_tokens"] = cap  # the cap is real: the upstream is told it too
            return cap
    return max(caps.values(), default=None)


def _message(rule: _Rule, retry_ms: float, prompt: int, worst_nano: int) -> str:
    limit = rule.limit
    wait = f"Retry after {max(1, math.ceil(retry_ms / 1000))} s."
    if rule.reason == "rpm":
        return f"Rate limit reached: {limit.owner} allows {limit.value} requests per minute (rpm). {wait}"
    if rule.reason == "tpm":
        return (
            f"Token rate limit reached: {limit.owner} allows {limit.value} tokens per minute (tpm); "
            f"this request counts {prompt} prompt tokens. {wait}"
        )
    if rule.reason == "concurrency":
        return f"Concurrency limit reached: {limit.owner} allows {limit.value} requests at once (max_concurrent). {wait}"
    period = "day" if limit.name.endswith("day") else "month"
    return (
        f"Budget exhausted: {limit.owner} may spend ${limit.value / 1e9:.2f} per {period} ({limit.name}); this request could cost "
        f"up to ${worst_nano / 1e9:.6f}. {wait}"
    )
