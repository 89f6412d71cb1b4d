"""Where limit counters live, chosen by the scheme of `[state] limits` (`gateway.stores.BACKENDS`):

- `memory`: this process's dicts. Exact, and free, but each process counts alone: with
  `--workers N` or several replicas use Redis (the startup log says so).
- `redis://host:port/db` (`rediss://` for TLS; `?prefix=` sets the key prefix, default `gwl:`): one
  Lua script per admission (all its checks applied atomically, time from Redis), pipelined with those
  of concurrent requests: a request waits for one round trip; and one script call settling every
  request that finished meanwhile, sent after the responses.
  Every call has a short timeout (`limits_timeout_ms`, 100 by default) behind a circuit breaker (the
  shared Redis layer, `gateway/stores/redis.py`); a failure is raised as `LimitsUnavailable` (the
  error tree's `StoreUnavailable`) and the caller applies the configured outage policy.
  Settlements that fail are kept and retried (up to `SETTLE_GIVE_UP_S`); leases lapse on their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis

from gateway.breaker import Breaker
from gateway.errors import StoreUnavailable
from gateway.limits import rules
from gateway.limits.rules import Check, Settlement, Verdict
from gateway.stores import Options, open_backend
from gateway.stores.redis import Batcher, Connection, split_prefix

log = logging.getLogger("gateway.limits")

SETTLE_RETRY_S = 1.0
SETTLE_GIVE_UP_S = 300.0
MAX_BATCH = 128  # admissions per pipeline: a full one takes Redis ~2 ms, well inside the timeout


LimitsUnavailable = StoreUnavailable  # the name the limits stage catches: every backend failure


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
    """Admissions are queued and sent in pipelines, one pipeline in flight at a time (the shared
    layer's `Batcher`); settlements likewise, in a lane of their own, so an admission never waits
    behind them. Each lane holds one connection: a request costs one Lua call inside Redis and a
    share of one round trip, however many arrive at once (a connection per concurrent call would
    exhaust redis-py's pool under load)."""

    shared = True

    def __init__(self, url: str, prefix: str = "gwl:", timeout_s: float = 0.1, breaker: Breaker | None = None) -> None:
        self.connection = Connection(url, prefix, timeout_s, breaker or Breaker("limits backend (Redis)"))
        self.prefix = prefix
        self.breaker = self.connection.breaker
        self._scripts = {"admit": _script("admit.lua"), "settle": _script("settle.lua")}
        self._shas: dict[str, str] = {}
        self._admissions: Batcher[tuple[str, bytes], Any] = Batcher(self.connection, self._send_admissions, MAX_BATCH)
        self._pending: list[tuple[float, Settlement]] = []
        self._settler: asyncio.Task[None] | None = None

    async def admit(self, checks: list[Check], lease: str) -> Verdict:
        prefix = self.prefix
        payload = orjson.dumps([(c.kind, prefix + c.key, c.limit, c.amount, c.extra) for c in checks])
        reply = await self._admissions.submit((lease, payload))
        if isinstance(reply, Exception):  # this script call's own error (NOSCRIPT after a Redis restart)
            self._shas.clear()  # loaded again on the next send
            raise self.connection.unavailable(reply)
        if reply[0] == 1:
            return Verdict(True, -1, 0.0, tuple(k.decode()[len(prefix) :] for k in reply[1:]))
        return Verdict(False, int(reply[1]) - 1, float(reply[2]), ())

    async def _send_admissions(self, batch: list[tuple[str, bytes]]) -> list[Any]:
        try:
            pipe = self.connection.redis.pipeline(transaction=False)
            admit = await self._sha("admit")
            for lease, checks in batch:
                pipe.evalsha(admit, 0, lease, checks)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        except BaseException:  # the connection failed or the batch timed out: a restarted Redis may have lost the scripts
            self._shas.clear()
            raise
        return results

    def settle(self, settlements: list[Settlement]) -> None:
        # Not the Batcher: nobody awaits a settlement, and a failed one is kept and sent again
        # rather than failed, so this lane is its own loop around the connection's guarded call.
        now = time.monotonic()
        self._pending.extend((now, s) for s in settlements)
        if self._settler is None or self._settler.done():
            self._settler = asyncio.get_running_loop().create_task(self._settle_all())

    async def _settle_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            prefix = self.prefix
            payload = orjson.dumps([(s.kind, prefix + s.key, s.a, s.b, s.c, s.lease) for _, s in batch])
            try:
                await self.connection.call(partial(self._settle_script, payload=payload), self.connection.timeout_s * 5)
            except StoreUnavailable:
                self._shas.clear()
                cutoff = time.monotonic() - SETTLE_GIVE_UP_S
                kept = [(t, s) for t, s in batch if t > cutoff]
                if len(kept) < len(batch):
                    log.error("limits backend: %d settlements older than %.0f s dropped", len(batch) - len(kept), SETTLE_GIVE_UP_S)
                self._pending = kept + self._pending
                await asyncio.sleep(SETTLE_RETRY_S)

    async def _settle_script(self, redis: aioredis.Redis, payload: bytes) -> Any:
        return await redis.evalsha(await self._sha("settle"), 0, payload)

    async def _sha(self, name: str) -> str:
        sha = self._shas.get(name)
        if sha is None:
            sha = self._shas[name] = await self.connection.redis.script_load(self._scripts[name])
        return sha

    async def idle(self) -> None:
        """Wait until everything queued so far has been sent (or has failed)."""
        await self._admissions.idle()
        if self._settler is not None and not self._settler.done():
            await asyncio.wait({self._settler})

    async def close(self) -> None:
        if self._settler is not None and not self._settler.done():
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._settler)
            except TimeoutError:
                self._settler.cancel()
        await self.connection.close()


def open_memory(url: str, options: Options) -> LimitStore:
    return MemoryLimits()


def open_redis(url: str, options: Options) -> LimitStore:
    rest, prefix = split_prefix(url)
    return RedisLimits(rest, prefix or "gwl:", options.timeout_s, Breaker("limits backend (Redis)", on_change=options.on_change))


def open_limits(url: str, timeout_s: float = 0.1, on_change: Callable[[bool], None] | None = None) -> LimitStore:
    """The backend `gateway.stores.BACKENDS["limits"]` names for this URL's scheme."""
    store: LimitStore = open_backend("limits", url, Options(timeout_s, on_change))
    return store
