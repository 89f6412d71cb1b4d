"""A circuit breaker for state backends (cache, limits): stop calling a failing Redis for a while.

Closed until `threshold` failures in a row; then open (calls skipped) for `cooldown_s`; then one
call is let through as a probe: success closes it, failure opens it again. Each transition is logged
once, and `on_change(up)` (if given) is told, so a metric can show the backend's state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("gateway.state")


class Breaker:
    def __init__(
        self,
        name: str = "backend",
        threshold: int = 3,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.name = name
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._on_change = on_change

    @property
    def up(self) -> bool:
        return self._failures < self._threshold

    def allow(self) -> bool:
        if self._failures < self._threshold:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        self._open_until = now + self._cooldown_s  # this call is the probe; others wait for its outcome
        return True

    def success(self) -> None:
        if self._failures >= self._threshold:
            log.warning("%s is answering again", self.name)
            if self._on_change is not None:
                self._on_change(True)
        self._failures = 0

    def failure(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures == self._threshold:
            log.warning("%s failing (%s); skipping it for %.0f s at a time", self.name, type(exc).__name__, self._cooldown_s)
            self._open_until = self._clock() + self._cooldown_s
            if self._on_change is not None:
                self._on_change(False)
        elif self._failures < self._threshold:
            log.warning("%s call failed (%s)", self.name, type(exc).__name__)
