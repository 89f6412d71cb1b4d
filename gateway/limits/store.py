"""Where limit counters live, chosen by `[state] limits`:

- `memory`: this process's dicts. Exact, and free, but each process counts alone: with
  `--workers N` or several replicas use Redis (the startup log says so).
- `redis://host:port/db` (`rediss://` for TLS; `?prefix=` sets the key prefix, default `gwl:`): one
  Lua script per admission (one round trip, all checks applied atomically, time from Redis), and
  settlements sent together, one script call for all that finished meanwhile, after the responses.
  Every call has a short timeout (`limits_timeout_ms`, 100 by default) behind a circuit breaker; a
  failure is raised as `LimitsUnavailable` and the caller applies the configured outage policy.
  Settlements that fail are kept and retried (up to `SETTLE_GIVE_UP_S`); leases lapse on their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol

from gateway.breaker import Breaker
from gateway.limits import rules
from gateway.limits.rules import Check, Settlement, Verdict
from gateway.redisurl import split_prefix

log = logging.getLogger("gateway.limits")

SETTLE_RETRY_S = 1.0
SETTLE_GIVE_UP_S = 300.0


class LimitsUnavailable(Exception):
    """The limits backend failed or is being skipped (breaker open)."""


class LimitStore(Protocol):
    shared: bool  # counted across processes and replicas

    async def admit(self, checks: list[Check], lease: str) -> Verdict: ...
    def settle(self, settlements: list[Settlement]) -> None: ...
    async def close(self) -> None: ...


class MemoryLimits:
    shared = False

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._budgets: dict[str, list[float]] = {}  # full key -> [spent, reserved, period end]

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
                spent, reserved, _ = self._budgets.get(full, (0, 0, ends))
                if not rules.fits(int(spent), int(reserved), check.limit, check.amount):
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
                    self._budgets[full] = [0, 0, ends]
                self._budgets[full][1] += check.amount
                periods.append(full)
        return Verdict(True, -1, 0.0, tuple(periods))

    def _forget_old_periods(self, now: float) -> None:
        for full in [k for k, (_, _, ends) in self._budgets.items() if ends + rules.DAY_MS < now]:
            del self._budgets[full]

    def settle(self, settlements: list[Settlement]) -> None:
        now = self._now()
        for s in settlements:
            if s.kind == "rate":
                self._tats[s.key] = rules.regcra(self._tats.get(s.key, 0.0), now, s.a, s.b, s.c)
            elif s.kind == "conc":
                self._leases.get(s.key, {}).pop(s.lease, None)
            elif (entry := self._budgets.get(s.key)) is not None:
                entry[0], entry[1] = rules.settle(int(entry[0]), int(entry[1]), s.a, s.b)

    def spent(self, full_key: str) -> tuple[int, int]:
        spent, reserved, _ = self._budgets.get(full_key, (0, 0, 0))
        return int(spent), int(reserved)

    async def close(self) -> None:
        return None


def _script(name: str) -> str:
    return (resources.files("gateway.limits") / name).read_text()


class RedisLimits:
    shared = True

    def __init__(self, url: str, prefix: str = "gwl:", timeout_s: float = 0.1, breaker: Breaker | None = None) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0)
        self.prefix = prefix
        self._timeout_s = timeout_s
        self.breaker = breaker or Breaker("limits backend (Redis)")
        self._admit = self._redis.register_script(_script("admit.lua"))
        self._settle = self._redis.register_script(_script("settle.lua"))
        self._pending: list[tuple[float, Settlement]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def admit(self, checks: list[Check], lease: str) -> Verdict:
        if not self.breaker.allow():
            raise LimitsUnavailable("breaker open")
        args: list[str | int] = [lease]
        for check in checks:
            args.extend((check.kind, self.prefix + check.key, check.limit, check.amount, check.extra))
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await self._admit(args=args)
        except Exception as exc:  # redis, OS and timeout errors alike: translated here, once
            self.breaker.failure(exc)
            raise LimitsUnavailable(type(exc).__name__) from exc
        self.breaker.success()
        if answer[0] == 1:
            return Verdict(True, -1, 0.0, tuple(k.decode()[len(self.prefix) :] for k in answer[1:]))
        return Verdict(False, int(answer[1]) - 1, float(answer[2]), ())

    def settle(self, settlements: list[Settlement]) -> None:
        now = time.monotonic()
        self._pending.extend((now, s) for s in settlements)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the settlements of requests finishing in this loop turn join
        while self._pending:
            batch, self._pending = self._pending, []
            args: list[str | int] = []
            for _, s in batch:
                args.extend((s.kind, self.prefix + s.key, s.a, s.b, s.c, s.lease))
            try:
                if not self.breaker.allow():
                    raise LimitsUnavailable("breaker open")
                async with asyncio.timeout(self._timeout_s * 5):
                    await self._settle(args=args)
                self.breaker.success()
            except Exception as exc:
                if not isinstance(exc, LimitsUnavailable):
                    self.breaker.failure(exc)
                cutoff = time.monotonic() - SETTLE_GIVE_UP_S
                kept = [(t, s) for t, s in batch if t > cutoff]
                if len(kept) < len(batch):
                    log.error("limits backend: %d settlements older than %.0f s dropped", len(batch) - len(kept), SETTLE_GIVE_UP_S)
                self._pending = kept + self._pending
                await asyncio.sleep(SETTLE_RETRY_S)

    async def close(self) -> None:
        if self._flushing is not None and not self._flushing.done():
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._flushing)
            except TimeoutError:
                self._flushing.cancel()
        await self._redis.aclose()


def open_limits(url: str, timeout_s: float = 0.1, on_change: Callable[[bool], None] | None = None) -> LimitStore:
    if url == "memory":
        return MemoryLimits()
    if not url.startswith(("redis://", "rediss://")):
        raise ValueError(f"unknown limits backend {url!r}: use memory or a redis:// URL")
    rest, prefix = split_prefix(url)
    return RedisLimits(rest, prefix or "gwl:", timeout_s, Breaker("limits backend (Redis)", on_change=on_change))
