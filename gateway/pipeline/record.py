"""What the gateway learned about one request, filled in stage by stage and handed to the recorder."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.providers.base import Deployment, Operation, Usage
from gateway.tokens import Tokenizer
from gateway.traces import context as tracecontext

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id(headers: Mapping[str, str]) -> str:
    """The client's `x-request-id` if it is sensible, else a new one: 32 hex digits, the first 12 the
    time in ms (as in a UUIDv7), the rest random. Ids made here sort by time, so the trace store's
    `request_id` index grows at its end; random ids dirtied a random index page per row, the largest
    share of an insert once the store holds rows (loadtests/RESULTS.md)."""
    given = headers.get("x-request-id")
    return given if given and _REQUEST_ID.match(given) else f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


@dataclass(slots=True)
class Attempt:
    """One call to one deployment: the routing stage appends one per try (retries and fallbacks)."""

    target: str  # "provider/model"
    model: str  # the gateway model name it was tried for (differs from Record.model on a fallback)
    started_s: float  # offset from the request's arrival
    latency_s: float = 0.0
    status: int = 0  # 0 until known; the provider's status, or the gateway's for network errors
    error_type: str | None = None
    server_address: str | None = None  # host:port of the real upstream


class Unanswered:
    """What an unanswered attempt's prompt is counted from. Deliberately not a dataclass: the trace
    sink serializes a Record whole, and this must not carry the body or the deployment's credentials
    there (orjson writes unknown types as null)."""

    __slots__ = ("body", "deployment", "op")

    def __init__(self, op: Operation, body: dict[str, Any], deployment: Deployment) -> None:
        self.op, self.body, self.deployment = op, body, deployment


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
    cost_usd: float | None = None  # set with usage; 0.0 when unpriced
    priced: bool = False  # a price applied (configured or bundled) to this request's deployment
    finish_reason: str | None = None
    upstream_s: float = 0.0  # time spent waiting for the provider
    ttft_s: float | None = None
    duration_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    route_rule: str | None = None  # the routing rule that picked the served model, if any
    prompt_id: str | None = None  # set when the request referenced a prompt (record.model is then the pinned model)
    prompt_version: int | None = None
    prompt_label: str | None = None  # None when the reference named a version number
    prompt_hash: str | None = None
    cache: str = "bypass"  # hit | miss | bypass | coalesced: the x-gateway-cache value
    # tracing (gateway/traces): the W3C context, and what content capture needs, as references
    trace_id: str = ""
    span_id: str = ""  # the gateway's SERVER span; attempt i's CLIENT span is child_span_id(span_id, i)
    parent_span_id: str | None = None  # from the client's traceparent
    trace_flags: str = "01"
    overhead_s: float | None = None  # the x-gateway-overhead-ms figure, once the response headers are out
    response_id: str | None = None
    response_model: str | None = None
    capture: str = "none"  # content capture for this request: none | metadata | full
    request_body: dict[str, Any] | None = None  # the parsed body (the trace sink sends only its parameters where they suffice)
    # "full" only: the body's JSON text as the client sent it, when the gateway changed nothing in it
    # (no prompt resolved, nothing redacted); the trace keeps it rather than re-serializing the body
    request_json: str | None = None
    response_json: str | None = None  # "full" only: the complete answer's JSON text, in OpenAI's format
    response_text: list[str] | None = None  # "full" only, streams: the relayed text
    redacted: dict[str, int] | None = None  # guardrail redactions by kind (the x-gateway-redacted header)
    # the prompt's tokens as counted by tiktoken (pipeline/usage.py `count_prompt`), with the encoding
    # they were counted with: guardrails, limits and charging each need it, and it is counted once
    prompt_count: int | None = None
    prompt_encoding: str | None = None
    lease: Any = None  # what the request holds against its limits (pipeline/limit.py), settled when it is over
    # an attempt that was sent and never answered (timed out, dropped, cancelled): its prompt is charged
    # if the request ends without usage (pipeline/dispatch.py charge_unanswered)
    unanswered: Unanswered | None = None
    # the process's tokenizer (gateway/tokens.py), which the stages that count use; not part of the trace
    tokenizer: Tokenizer = field(default_factory=Tokenizer)

    def mark_overhead(self, now: float) -> float:
        """The gateway's own time so far (total minus upstream) in ms, to 0.01: header and metric share it."""
        ms = round(max(0.0, (now - self.t0 - self.upstream_s) * 1000), 2)
        self.overhead_s = ms / 1000
        return ms

    def mark_stalled(self) -> None:
        """The client stopped reading and was cut off (gateway/server.py): said before its relay ends."""
        self.status, self.error_type = 499, "client_stalled"

    def close(self) -> None:
        self.duration_s = time.perf_counter() - self.t0


def begin(headers: Mapping[str, str], op: Operation, t0: float, tokenizer: Tokenizer) -> Record:
    """A request's record, at its arrival (`t0`, perf_counter), in the client's trace if it sent one."""
    record = Record(request_id(headers), op.value, time.time(), t0, tokenizer=tokenizer)
    tracecontext.start(record, headers.get("traceparent"))
    return record
