"""The last stage: a request is over, so settle what it holds against its limits, count it in the
metrics and hand its record to the trace sink.

It runs exactly once per request: from `pipeline/run.py` when the answer is complete or an error,
and for a stream when its relay ends however it ends (`dispatch.Stream.relay`, or the reuse stage's
replay and follow), which is after the response was returned.
"""

from __future__ import annotations

import logging

from gateway.metrics import Metrics
from gateway.pipeline.limit import Limiter
from gateway.pipeline.record import Record
from gateway.routing import RetryBudget
from gateway.traces.sink import TraceSink

log = logging.getLogger("gateway")


class Finish:
    __slots__ = ("budget", "limiter", "metrics", "traces")

    def __init__(self, budget: RetryBudget, limiter: Limiter, metrics: Metrics) -> None:
        self.budget = budget  # its `requests` counts the requests in flight (pipeline/run.py adds each one)
        self.limiter = limiter
        self.metrics = metrics
        self.traces: TraceSink | None = None  # set once the sink is open (the app's lifespan)

    def __call__(self, record: Record) -> None:
        self.budget.requests -= 1
        record.close()
        if record.lease is not None:
            self.limiter.settle(record.lease, record)
            record.lease = None
        self.metrics.observe(record)
        if self.traces is not None:
            self.traces.put(record)
        if record.status >= 500:
            log.warning("request %s failed: %s %s (target %s)", record.request_id, record.status, record.error_type, record.target)
