"""Choosing a deployment for each attempt, and learning from how attempts went.

Each model has a `Balancer` over its deployments (process-local state: in-flight counts, an EWMA of
latency, consecutive failures). For an attempt it first narrows the deployments to the eligible
ones: not already tried by this request, and not ejected. A deployment is ejected after
`eject_after` consecutive failures, for `base_ejection_s` times its ejection count, but never more
than half of a group at once; when its time is up it is on probation and takes exactly one request
(the probe): success restores it, failure ejects it again for longer. Among the eligible ones:

- `weighted` (default): random, proportional to weight;
- `least_outstanding`: fewest requests in flight per unit of weight;
- `latency`: lowest EWMA latency (an unmeasured deployment counts as fastest, so it gets measured);
- with `sticky`, the request's `user` picks by weighted rendezvous hashing, so a user stays on the
  same deployment while it is eligible, and A/B splits by weight stay consistent per user.

`RetryBudget` caps retries at a fraction of the requests in flight (floor 3), so that retries cannot
multiply an outage. `backoff` is full jitter, honouring a provider's Retry-After when the deadline
allows it. Time comes from an injectable clock so the tests can drive it.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

STRATEGIES = ("weighted", "least_outstanding", "latency")


@dataclass(slots=True)
class Health:
    weight: float
    outstanding: int = 0
    ewma_s: float | None = None
    failures: int = 0  # consecutive
    ejections: int = 0
    ejected_until: float = 0.0
    probing: bool = False  # ejection over, its single probe is in flight


@dataclass
class Balancer:
    weights: Sequence[float]
    strategy: str = "weighted"
    sticky: bool = False
    eject_after: int = 5
    base_ejection_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    health: list[Health] = field(init=False)

    def __post_init__(self) -> None:
        self.health = [Health(w) for w in self.weights]

    def _available(self, i: int, now: float) -> bool:
        h = self.health[i]
        if h.ejected_until == 0.0:
            return True
        return now >= h.ejected_until and not h.probing  # probation: one probe at a time

    def eligible(self, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
        now = self.clock()
        return [i for i in range(len(self.health)) if i not in exclude and self._available(i, now)]

    def choose(self, user: str | None = None, exclude: set[int] | frozenset[int] = frozenset()) -> int | None:
        candidates = self.eligible(exclude)
        if not candidates:
            return None
        if len(candidates) == 1:
            index = candidates[0]
        elif self.sticky and user:
            index = max(candidates, key=lambda i: _rendezvous(user, i, self.health[i].weight))
        elif self.strategy == "least_outstanding":
            index = min(candidates, key=lambda i: (self.health[i].outstanding / self.health[i].weight, self.rng.random()))
        elif self.strategy == "latency":
            index = min(candidates, key=lambda i: (self.health[i].ewma_s or 0.0, self.rng.random()))
        else:
            index = _weighted(candidates, [self.health[i].weight for i in candidates], self.rng)
        h = self.health[index]
        if h.ejected_until:
            h.probing = True
        h.outstanding += 1
        return index

    def finished(self, index: int, ok: bool, latency_s: float | None = None) -> None:
        h = self.health[index]
        h.outstanding = max(0, h.outstanding - 1)
        if latency_s is not None and ok:
            h.ewma_s = latency_s if h.ewma_s is None else 0.8 * h.ewma_s + 0.2 * latency_s
        if ok:
            h.failures, h.ejected_until, h.probing = 0, 0.0, False
            return
        h.failures += 1
        if not h.probing and h.failures < self.eject_after:
            return
        if self._may_eject(index):
            h.ejections += 1
            h.ejected_until = self.clock() + self.base_ejection_s * h.ejections
        elif h.probing:  # a failed probe, but half the targets are out already: back in rotation
            h.ejected_until = 0.0
        h.probing = False

    def _may_eject(self, index: int) -> bool:
        now = self.clock()
        ejected = sum(1 for i, h in enumerate(self.health) if i != index and h.ejected_until and now < h.ejected_until)
        return ejected + 1 <= len(self.health) // 2

    def ejected(self) -> list[int]:
        now = self.clock()
        return [i for i, h in enumerate(self.health) if h.ejected_until and now < h.ejected_until]


def _weighted(candidates: list[int], weights: list[float], rng: random.Random) -> int:
    point = rng.random() * sum(weights)
    for index, weight in zip(candidates, weights, strict=True):
        point -= weight
        if point < 0:
            return index
    return candidates[-1]


def _rendezvous(user: str, index: int, weight: float) -> float:
    digest = hashlib.blake2b(f"{index}:{user}".encode(), digest_size=8).digest()
    uniform = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -weight / math.log(uniform)


@dataclass
class RetryBudget:
    """Retries in flight may be at most `ratio` of requests in flight, or `floor`, whichever is larger."""

    ratio: float = 0.2
    floor: int = 3
    requests: int = 0
    retries: int = 0

    def allow(self) -> bool:
        return self.retries < max(self.floor, self.ratio * self.requests)


def backoff(
    attempt: int, retry_after: float | None, remaining_s: float, rng: random.Random, *, base_s: float = 0.1, cap_s: float = 2.0
) -> float | None:
    """Seconds to wait before retry number `attempt` (1-based), or None when the deadline does not allow it."""
    delay = retry_after if retry_after is not None else rng.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))
    return delay if delay < remaining_s else None
