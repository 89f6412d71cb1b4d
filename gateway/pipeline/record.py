"""What the gateway learned about one request, filled in stage by stage and handed to the recorder."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.providers.base import Usage


@dataclass(slots=True)
class Record:
    request_id: str
    operation: str
    started_at: float  # wall clock, seconds since the epoch
    t0: float  # perf_counter at arrival
    model: str | None = None
    key_name: str | None = None
    team: str | None = None
    policy_version: str | None = None
    target: str | None = None
    stream: bool = False
    status: int = 200
    error_type: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    upstream_s: float = 0.0  # time spent waiting for the provider
    ttft_s: float | None = None
    duration_s: float = 0.0

    def overhead_ms(self, now: float) -> float:
        return max(0.0, (now - self.t0 - self.upstream_s) * 1000)

    def close(self) -> None:
        self.duration_s = time.perf_counter() - self.t0
