"""Prometheus instruments, on a registry of their own (no module-level state).

With several worker processes the supervisor sets PROMETHEUS_MULTIPROC_DIR before any worker
imports prometheus_client, so each worker writes its values to shared files and `/metrics`
aggregates all of them. Labels are closed sets: configured model names (anything else collapses to
"other") and status codes; never keys or users.

A finished request's observations are tallied in plain integers (`_Tally`, per model, status and
cache result) and added to the instruments in one step per series when `/metrics` is scraped and
at most `FLUSH_S` after a request: prometheus-client takes a lock and checks its state for every
single `inc` and `observe`, ~1.3 us each, and a request makes seven of them (~9% of a cache hit).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.pipeline.record import Record
from gateway.traces.writer import DEGRADE_REASONS, DROP_REASONS, SPAN_DROP_REASONS

# OpenTelemetry GenAI semantic-convention bucket boundaries
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
RATE_LIMIT_REASONS = ("rpm", "tpm", "concurrency", "budget")
# the closed set of upstream error types (GatewayError.error_type of what providers and the network do)
UPSTREAM_ERRORS = frozenset(
    {
        "connect_error", "connect_timeout", "first_byte_timeout", "idle_timeout", "read_timeout", "deadline_exceeded",
        "upstream_auth", "upstream_disconnected", "upstream_error", "upstream_garbage", "upstream_invalid_request",
        "upstream_rate_limited", "upstream_server_error", "upstream_timeout", "stream_incomplete",
    }
)  # fmt: skip
TraceTotals = Callable[[], tuple[dict[str, Any], tuple[int, int]]]
FLUSH_S = 0.05  # the longest a request's observations wait before the instruments (and other workers) see them


class _Children(NamedTuple):
    requests: Counter
    duration: Histogram
    ttft: Histogram
    input_tokens: Counter
    output_tokens: Counter
    cached_tokens: Counter
    cost: Counter


class _Tally:
    """What requests of one (model, status, cache result) did since the last flush."""

    __slots__ = ("cost", "duration", "duration_sum", "requests", "tokens", "ttft", "ttft_sum")

    def __init__(self) -> None:
        self.requests = 0
        self.duration = [0] * (len(DURATION_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.duration_sum = 0.0
        self.ttft = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.tokens = [0, 0, 0]  # input, output, cached input
        self.cost = 0.0


def _add(histogram: Histogram, counts: list[int], total: float) -> None:
    """Add tallied observations to a (labelled) histogram, one step per bucket that got any.

    prometheus-client only observes one value at a time; this writes to the same per-bucket values
    (`_buckets`, non-cumulative, and `_sum`, as `Histogram.observe` does), so the exposition, and
    the multiprocess files with --workers, are exactly what observing each value would have made."""
    if any(counts):
        histogram._sum.inc(total)
        for bucket, n in zip(histogram._buckets, counts, strict=True):
            if n:
                bucket.inc(n)


class Metrics:
    def __init__(self, models: frozenset[str]) -> None:
        self.models = models  # the configured model names: the only values of the `model` label
        self.registry = CollectorRegistry()
        self._multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        reg = None if self._multiprocess else self.registry
        if self._multiprocess:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self.requests = Counter("gateway_requests_total", "Requests by model and HTTP status", ["model", "status"], registry=reg)
        self.duration = Histogram("gateway_request_duration_seconds", "Request duration", ["model"], buckets=DURATION_BUCKETS, registry=reg)
        self.ttft = Histogram("gateway_time_to_first_token_seconds", "Time to first token", ["model"], buckets=TTFT_BUCKETS, registry=reg)
        self.overhead = Histogram("gateway_overhead_seconds", "Gateway time: total minus upstream", buckets=OVERHEAD_BUCKETS, registry=reg)
        self.tokens = Counter("gateway_tokens_total", "Tokens by model and type", ["model", "type"], registry=reg)
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total", "Upstream errors by provider and error type", ["provider", "error_type"], registry=reg
        )
        self.in_flight = Gauge("gateway_in_flight_requests", "Requests in progress", registry=reg, multiprocess_mode="livesum")
        self.cache_results = Counter(
            "gateway_cache_results_total", "Cache results (hit, miss, bypass, coalesced)", ["model", "result"], registry=reg
        )
        self.cache_errors = Counter("gateway_cache_errors_total", "Cache backend failures, each bypassed", ["operation"], registry=reg)
        self.batch_requests = Histogram(
            "gateway_embeddings_batch_requests", "Requests per upstream embeddings call", buckets=BATCH_BUCKETS, registry=reg
        )
        self.batch_inputs = Histogram(
            "gateway_embeddings_batch_inputs", "Inputs per upstream embeddings call", buckets=BATCH_BUCKETS, registry=reg
        )
        self._cache_children: dict[tuple[str, str], Counter] = {}
        self._children: dict[tuple[str, int], _Children] = {}
        self._tallies: dict[tuple[str, int, str], _Tally] = {}
        self._overhead = [0] * (len(OVERHEAD_BUCKETS) + 1)
        self._overhead_sum = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self.cost = Counter("gateway_cost_usd_total", "Cost of requests in USD, by model", ["model"], registry=reg)
        self.rate_limited = Counter(
            "gateway_rate_limit_rejections_total", "Requests rejected by a rate limit, by reason", ["reason"], registry=reg
        )
        for reason in RATE_LIMIT_REASONS:
            self.rate_limited.labels(reason)
        self.limits_unchecked = Counter(
            "gateway_limits_unchecked_total",
            "Requests that met a failing limits backend, by outcome (admitted unchecked or rejected)",
            ["outcome"],
            registry=reg,
        )
        for outcome in ("admitted", "rejected"):
            self.limits_unchecked.labels(outcome)
        self.limits_backend_up = Gauge(
            "gateway_limits_backend_up", "1 while the limits backend answers, 0 while its breaker is open", registry=reg,
            multiprocess_mode="min",
        )  # fmt: skip
        self.limits_backend_up.set(1)
        self.trace_totals: TraceTotals | None = None  # set once the trace sink is open
        self.registry.register(_TraceCollector(self))

    def model_label(self, model: str | None) -> str:
        return model if model in self.models else "other"

    def _for(self, model: str | None, status: int) -> _Children:
        # prometheus-client's labels() costs ~1 us a call; the label sets are few, so resolve each once
        key = (self.model_label(model), status)
        children = self._children.get(key)
        if children is None:
            name = key[0]
            children = self._children[key] = _Children(
                self.requests.labels(name, str(status)),
                self.duration.labels(name),
                self.ttft.labels(name),
                self.tokens.labels(name, "input"),
                self.tokens.labels(name, "output"),
                self.tokens.labels(name, "cached_input"),
                self.cost.labels(name),
            )
        return children

    def set_in_flight(self, count: int) -> None:
        """Requests in progress: set when scraped and every second, not twice per request."""
        self.in_flight.set(count)

    def observe(self, record: Record) -> None:
        """Everything about a finished request (once per request), tallied until the next flush."""
        key = (self.model_label(record.model), record.status, record.cache)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally()
        tally.requests += 1
        duration = record.duration_s
        tally.duration[bisect_left(DURATION_BUCKETS, duration)] += 1
        tally.duration_sum += duration
        overhead = max(0.0, record.overhead_s if record.overhead_s is not None else duration - record.upstream_s)
        self._overhead[bisect_left(OVERHEAD_BUCKETS, overhead)] += 1
        self._overhead_sum += overhead
        if record.ttft_s is not None:
            tally.ttft[bisect_left(TTFT_BUCKETS, record.ttft_s)] += 1
            tally.ttft_sum += record.ttft_s
        usage = record.usage
        if usage is not None:
            tokens = tally.tokens
            tokens[0] += usage.prompt_tokens
            tokens[1] += usage.completion_tokens
            tokens[2] += usage.cached_tokens
        if record.cost_usd:
            tally.cost += record.cost_usd
        for attempt in record.attempts:
            if attempt.error_type is not None:
                self._upstream_error(attempt.target, attempt.error_type)
        if not record.attempts and record.error_type is not None and record.target is not None and record.status >= 500:
            self._upstream_error(record.target, record.error_type)
        if self._flush_timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop (a test calling this directly): flushed when scraped
                self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Add the tallies to the instruments."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        tallies, self._tallies = self._tallies, {}
        for (model, status, cache), t in tallies.items():
            c = self._for(model, status)
            c.requests.inc(t.requests)
            _add(c.duration, t.duration, t.duration_sum)
            _add(c.ttft, t.ttft, t.ttft_sum)
            for counter, n in zip((c.input_tokens, c.output_tokens, c.cached_tokens), t.tokens, strict=True):
                if n:
                    counter.inc(n)
            if t.cost:
                c.cost.inc(t.cost)
            cache_key = (model, cache)
            child = self._cache_children.get(cache_key)
            if child is None:
                child = self._cache_children[cache_key] = self.cache_results.labels(*cache_key)
            child.inc(t.requests)
        if any(self._overhead):
            _add(self.overhead, self._overhead, self._overhead_sum)
            self._overhead = [0] * len(self._overhead)
            self._overhead_sum = 0.0

    def _upstream_error(self, target: str, error_type: str) -> None:
        self.upstream_errors.labels(target.partition("/")[0], error_type if error_type in UPSTREAM_ERRORS else "other").inc()

    def batch(self, requests: int, inputs: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_inputs.observe(inputs)

    def render(self) -> bytes:
        self.flush()
        return generate_latest(self.registry)


class _TraceCollector:
    """The trace writer's totals (every worker holds the same copy), plus drops not yet reported to it."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        source = self._metrics.trace_totals
        totals, (dropped_here, spans_dropped_here) = source() if source is not None else ({}, (0, 0))
        written = CounterMetricFamily("gateway_trace_records_written", "Trace records written to the store")
        written.add_metric([], totals.get("written", 0))
        dropped = _by_reason(
            "gateway_trace_records_dropped", "Trace records dropped, by reason", totals.get("dropped"), DROP_REASONS, dropped_here
        )
        degraded = _by_reason(
            "gateway_trace_records_degraded",
            "Trace records stored without their content (it could not be captured), by reason",
            totals.get("degraded"),
            DEGRADE_REASONS,
        )
        exported = CounterMetricFamily("gateway_trace_spans_exported", "Spans accepted by the OTLP endpoint")
        exported.add_metric([], totals.get("spans_exported", 0))
        spans_dropped = _by_reason(
            "gateway_trace_spans_dropped", "Spans dropped, by reason", totals.get("spans_dropped"), SPAN_DROP_REASONS, spans_dropped_here
        )
        yield from (written, dropped, degraded, exported, spans_dropped)


def _by_reason(
    name: str, doc: str, counts: dict[str, int] | None, reasons: tuple[str, ...], queue_full_here: int = 0
) -> CounterMetricFamily:
    """The writer's counts by reason (each reason of the closed set shown, from 0), plus what this
    worker dropped from its own queue."""
    family = CounterMetricFamily(name, doc, labels=["reason"])
    by_reason = {**dict.fromkeys(reasons, 0), **(counts or {})}
    if queue_full_here:
        by_reason["queue_full"] = by_reason.get("queue_full", 0) + queue_full_here
    for reason, value in sorted(by_reason.items()):
        family.add_metric([reason], value)
    return family
