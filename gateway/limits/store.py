"""Where limit counters live, chosen by `[state] limits`:

- `memory`: this process's dicts. Exact, and free, but each process counts alone: with
  `--workers N` or several replicas use Redis (the startup log says so).
- `redis://host:port/db` (`rediss://` for TLS; `?prefix=` sets the key prefix, default `gwl:`): one
  Lua script per admission (all its checks applied atomically, time from Redis), pipelined with those
  of concurrent requests: a request waits for one round trip; and one script call settling every
  request that finished meanwhile, sent after the responses.
  Every call has a short timeout (`limits_timeout_ms`, 100 by default) behind a circuit breaker; a
  failure is raised as `LimitsUnavailable` and the caller applies the configured outage policy.
  Settlements that fail are kept and retried (up to `SETTLE_GIVE_UP_S`); leases lapse on their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import orjson

from gateway.breaker import Breaker
from gateway.limits import rules
from gateway.limits.rules import Check, Settlement, Verdict
from gateway.redisurl import split_prefix

log = logging.getLogger("gateway.limits")

SETTLE_RETRY_S = 1.0
SETTLE_GIVE_UP_S = 300.0
MAX_BATCH = 128  # admissions per pipeline: a full one takes Redis ~2 ms, well inside the timeout


class LimitsUnavailable(Exception):
    """The limits backend failed or is being skipped (breaker open)."""


class LimitStore(Protocol):
    shared: bool  # counted across processes and replicas

    async def admit(self, checks: list[Check], lease: str) -> Verdict: ...
    def settle(self, settlements: list[Settlement]) -> None: ...
    async def close(self) -> None: ...


@dataclass(slots=True)
class _Budget:
    spent: int  # nano-USD
    reserved: int
    ends: float  # end of its period, ms


class MemoryLimits:
    shared = False

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._budgets: dict[str, _Budget] = {}  # by full key (counter:period)

    def _now(self) -> float:
        return self._clock() * 1000

    async def admit(self, checks: list[Check], lease: str) -> Verdict:
        return self.admit_now(checks, lease)

    def admit_now(self, checks: list[Check], lease: str) -> Verdict:
        now = self._now()
        plans: list[Any] = []
        for i, check in enumerate(checks):
            if check.kind == "rate":
                new, retry = rules.gcra(self._tats.get(check.key, 0.0), now, check.limit, check.extra, check.amount)
                if retry > 0:
                    return Verdict(False, i, retry, ())
                plans.append(new)
            elif check.kind == "conc":
                held = self._leases.setdefault(check.key, {})
                for expired in [k for k, until in held.items() if until <= now]:
                    del held[expired]
                if len(held) >= check.limit:
                    return Verdict(False, i, 1000.0, ())
                plans.append(None)
            else:
                suffix, ends = rules.period(check.kind, now)
                full = f"{check.key}:{suffix}"
                budget = self._budgets.get(full)
                spent, reserved = (budget.spent, budget.reserved) if budget is not None else (0, 0)
                if not rules.fits(spent, reserved, check.limit, check.amount):
                    return Verdict(False, i, ends - now, ())
                plans.append((full, ends))
        periods = []
        for check, plan in zip(checks, plans, strict=True):
            if check.kind == "rate":
                self._tats[check.key] = plan
            elif check.kind == "conc":
                self._leases[check.key][lease] = now + check.extra
            else:
                full, ends = plan
                if full not in self._budgets:
                    self._forget_old_periods(now)
                    self._budgets[full] = _Budget(0, 0, ends)
                self._budgets[full].reserved += check.amount
                periods.append(full)
        return Verdict(True, -1, 0.0, tuple(periods))

    def _forget_old_periods(self, now: float) -> None:
        for full in [k for k, b in self._budgets.items() if b.ends + rules.DAY_MS < now]:
            del self._budgets[full]

    def settle(self, settlements: list[Settlement]) -> None:
        now = self._now()
        for s in settlements:
            if s.kind == "rate":
                self._tats[s.key] = rules.regcra(self._tats.get(s.key, 0.0), now, s.a, s.b, s.c)
            elif s.kind == "conc":
                self._leases.get(s.key, {}).pop(s.lease, None)
            elif (budget := self._budgets.get(s.key)) is not None:
                budget.spent, budget.reserved = rules.settle(budget.spent, budget.reserved, s.a, s.b)

    def spent(self, full_key: str) -> tuple[int, int]:
        budget = self._budgets.get(full_key)
        return (budget.spent, budget.reserved) if budget is not None else (0, 0)

    async def close(self) -> None:
        return None


def _script(name: str) -> str:
    return (resources.files("gateway.limits") / name).read_text()


class RedisLimits:
    """Admissions are queued and sent in pipelines, one pipeline in flight at a time; settlements
    likewise, in a lane of their own, so an admission never waits behind them. Each lane holds one
    connection: a request costs one Lua call inside Redis and a share of one round trip, however many
    arrive at once (a connection per concurrent call would exhaust redis-py's pool under load)."""

    shared = True

    def __init__(self, url: str, prefix: str = "gwl:", timeout_s: float = 0.1, breaker: Breaker | None = None) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0)
        self.prefix = prefix
        self._timeout_s = timeout_s
        self.breaker = breaker or Breaker("limits backend (Redis)")
        self._scripts = {"admit": _script("admit.lua"), "settle": _script("settle.lua")}
        self._shas: dict[str, str] = {}
        self._admissions: list[tuple[str, bytes, asyncio.Future[Any]]] = []
        self._pending: list[tuple[float, Settlement]] = []
        self._admitter: asyncio.Task[None] | None = None
        self._settler: asyncio.Task[None] | None = None

    async def admit(self, checks: list[Check], lease: str) -> Verdict:
        if not self.breaker.allow():
            raise LimitsUnavailable("breaker open")
        prefix = self.prefix
        payload = orjson.dumps([(c.kind, prefix + c.key, c.limit, c.amount, c.extra) for c in checks])
        answer = asyncio.get_running_loop().create_future()
        self._admissions.append((lease, payload, answer))
        if self._admitter is None or self._admitter.done():
            self._admitter = asyncio.get_running_loop().create_task(self._admit_all())
        reply = await answer
        if reply[0] == 1:
            return Verdict(True, -1, 0.0, tuple(k.decode()[len(self.prefix) :] for k in reply[1:]))
        return Verdict(False, int(reply[1]) - 1, float(reply[2]), ())

    async def _admit_all(self) -> None:
        while self._admissions:
            batch, self._admissions = self._admissions[:MAX_BATCH], self._admissions[MAX_BATCH:]
            try:
                async with asyncio.timeout(self._timeout_s):
                    pipe = self._redis.pipeline(transaction=False)
                    admit = await self._sha("admit")
                    for lease, checks, _ in batch:
                        pipe.evalsha(admit, 0, lease, checks)
                    results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # redis, OS and timeout errors alike: translated here, once
                self.breaker.failure(exc)
                results = [exc] * len(batch)
            else:
                self.breaker.success()
            for (_, _, answer), result in zip(batch, results, strict=True):
                if answer.done():
                    continue
                if isinstance(result, Exception):
                    self._shas.clear()  # NOSCRIPT after a Redis restart: loaded again on the next send
                    answer.set_exception(LimitsUnavailable(type(result).__name__))
                else:
                    answer.set_result(result)

    def settle(self, settlements: list[Settlement]) -> None:
        now = time.monotonic()
        self._pending.extend((now, s) for s in settlements)
        if self._settler is None or self._settler.done():
            self._settler = asyncio.get_running_loop().create_task(self._settle_all())

    async def _settle_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                if not self.breaker.allow():
                    raise LimitsUnavailable("breaker open")
                prefix = self.prefix
                payload = orjson.dumps([(s.kind, prefix + s.key, s.a, s.b, s.c, s.lease) for _, s in batch])
                async with asyncio.timeout(self._timeout_s * 5):
                    await self._redis.evalsha(await self._sha("settle"), 0, payload)
            except Exception as exc:
                if not isinstance(exc, LimitsUnavailable):
                    self._shas.clear()
                    self.breaker.failure(exc)
                cutoff = time.monotonic() - SETTLE_GIVE_UP_S
                kept = [(t, s) for t, s in batch if t > cutoff]
                if len(kept) < len(batch):
                    log.error("limits backend: %d settlements older than %.0f s dropped", len(batch) - len(kept), SETTLE_GIVE_UP_S)
                self._pending = kept + self._pending
                await asyncio.sleep(SETTLE_RETRY_S)
            else:
                self.breaker.success()

    async def _sha(self, name: str) -> str:
        sha = self._shas.get(name)
        if sha is None:
            sha = self._shas[name] = await self._redis.script_load(self._scripts[name])
        return sha

    async def idle(self) -> None:
        """Wait until everything queued so far has been sent (or has failed)."""
        for task in (self._admitter, self._settler):
            if task is not None and not task.done():
                await asyncio.wait({task})

    async def close(self) -> None:
        if self._settler is not None and not self._settler.done():
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._settler)
            except TimeoutError:
                self._settler.cancel()
        await self._redis.aclose()


def open_limits(url: str, timeout_s: float = 0.1, on_change: Callable[[bool], None] | None = None) -> LimitStore:
    if url == "memory":
        return MemoryLimits()
    if not url.startswith(("redis://", "rediss://")):
        raise ValueError(f"unknown limits backend {url!r}: use memory or a redis:// URL")
    rest, prefix = split_prefix(url)
    return RedisLimits(rest, prefix or "gwl:", timeout_s, Breaker("limits backend (Redis)", on_change=on_change))
