"""`gateway traces export` and `gateway traces tail`: the trace store, read while the gateway runs.

Both read the trace store named by the config's `[state] traces` (`store.TraceStore`: for SQLite,
the file read-only; WAL lets readers and the writer work at once), or, given `--url`, read a running gateway's admin API (`--key`, default
$GATEWAY_ADMIN_KEY): the same rows, for a gateway on another machine. `export` writes one JSON line
per request, shaped as an evaluation dataset row: input messages, output message, model, prompt
version, usage, cost, latency, tags.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson
from pydantic import ValidationError

from gateway.admin_client import AdminError, call
from gateway.config import ConfigError, default_path
from gateway.config.load import read_toml
from gateway.config.problems import from_validation
from gateway.config.schema import StateSection
from gateway.traces import capture, store


def dataset_row(trace: dict[str, Any]) -> dict[str, Any]:
    request, response = trace.get("request"), trace.get("response")
    full = trace.get("capture") == "full"
    usable_request = request if full and isinstance(request, dict) and not request.get("truncated") else None
    output: dict[str, Any] | None = None
    if full and isinstance(response, dict) and not response.get("truncated"):
        output = capture.output_message(response, None, trace.get("finish_reason")) if "choices" in response else response
    prompt = None
    if trace.get("prompt_id"):
        prompt = {k: trace[f"prompt_{k}"] for k in ("id", "version", "label", "hash")}
    return {
        "request_id": trace["request_id"],
        "trace_id": trace["trace_id"],
        "timestamp": trace["started_at"],
        "model": trace["model"],
        "target": trace["target"],
        "prompt": prompt,
        "input": capture.input_messages(trace["operation"], usable_request),
        "output": output,
        "params": trace.get("params") or {},
        "usage": {"input_tokens": trace["input_tokens"], "output_tokens": trace["output_tokens"], "cached_tokens": trace["cached_tokens"]},
        "cost_usd": trace["cost_usd"],
        "latency_ms": trace["duration_ms"],
        "ttft_ms": trace["ttft_ms"],
        "status": trace["status"],
        "finish_reason": trace["finish_reason"],
        "tags": {
            "team": trace["team"],
            "key_name": trace["key_name"],
            "operation": trace["operation"],
            "stream": trace["stream"],
            "cache": trace["cache"],
            "policy_version": trace["policy_version"],
            "route_rule": trace["route_rule"],
            "error_type": trace["error_type"],
            "capture": trace["capture"],
        },
    }


def sample(rows: Iterable[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """A uniform sample of `n` rows (reservoir), reproducible for the same store and seed, in time order."""
    rng = random.Random(seed)
    kept: list[tuple[int, dict[str, Any]]] = []
    for i, row in enumerate(rows):
        if len(kept) < n:
            kept.append((i, row))
        else:
            j = rng.randrange(i + 1)
            if j < n:
                kept[j] = (i, row)
    return [row for _, row in sorted(kept, key=lambda pair: pair[0])]


def _open(config_arg: str | None) -> store.TraceStore:
    """The store named by the config's `[state] traces`, to read. Only that key is read: no
    provider secret needs to be resolvable on the machine that reads traces."""
    path = Path(config_arg) if config_arg else default_path()
    try:
        state = StateSection.model_validate((read_toml(path) if path else {}).get("state", {}))
    except ValidationError as exc:
        raise ConfigError(from_validation(str(path), exc)) from None
    base = path.resolve().parent if path else Path.cwd()
    return store.open_store(store.located(state.traces, lambda p: base / Path(p).expanduser()))


class Api:
    """The trace store through a running gateway's `GET /admin/traces`, page by page."""

    def __init__(self, url: str, key: str | None, page_size: int) -> None:
        self.url, self.key, self.page_size = url, key, page_size

    def _page(self, params: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        body = call("GET", self.url, "/admin/traces", self.key, 60, params=params)
        return body["data"], body["next_cursor"]

    def scan(self, params: dict[str, Any], after: int | None = None) -> Iterator[dict[str, Any]]:
        """Every matching row, oldest first (after the row with seq `after`, if given)."""
        query = {**{k: v for k, v in params.items() if v is not None}, "order": "asc", "limit": self.page_size}
        cursor: int | str | None = after
        while True:
            data, cursor = self._page({**query, "cursor": cursor} if cursor is not None else query)
            yield from data
            if cursor is None:
                return

    def newest(self, n: int) -> list[dict[str, Any]]:
        return self._page({"limit": n})[0]


def _api(args: argparse.Namespace) -> Api | None:
    return Api(args.url, args.key, args.page_size) if args.url else None


def cmd_export(args: argparse.Namespace) -> int:
    api = _api(args)
    rows: Iterable[dict[str, Any]]
    if api is not None:  # the gateway parses and checks the filters
        rows = api.scan({"since": args.since, "until": args.until, "model": args.model, "team": args.team})
    else:
        filters = store.Filters(
            since=store.parse_time(args.since) if args.since else None,
            until=store.parse_time(args.until) if args.until else None,
            model=args.model,
            team=args.team,
        )
        rows = _open(args.config).scan(filters)
    if args.sample is not None:
        rows = sample(rows, args.sample, args.seed)
    out: TextIO = sys.stdout
    for trace in rows:
        out.write(orjson.dumps(dataset_row(trace)).decode() + "\n")
    out.flush()
    return 0


def line(trace: dict[str, Any]) -> str:
    served = f" -> {trace['target']}" if trace["target"] else ""
    tokens = f"in={trace['input_tokens']} out={trace['output_tokens']}" if trace["input_tokens"] is not None else "in=- out=-"
    cost = f"${trace['cost_usd']:.6f}" if trace["cost_usd"] is not None else "$-"
    error = f" {trace['error_type']}" if trace["error_type"] else ""
    prompt = f" prompt={trace['prompt_id']}@{trace['prompt_version']}" if trace["prompt_id"] else ""
    return (
        f"{trace['started_at']}  {trace['status']}{error}  {trace['operation']} {trace['model']}{served}  "
        f"{trace['duration_ms']:.1f}ms  {tokens}  {cost}  team={trace['team']} cache={trace['cache']}{prompt}  {trace['request_id']}"
    )


def follow(
    newest: Callable[[int], list[dict[str, Any]]], after: Callable[[int], Iterable[dict[str, Any]]], lines: int, interval: float
) -> Iterator[dict[str, Any]]:
    """The newest `lines` rows, oldest of them first, then every row as it arrives."""
    latest = newest(lines)
    yield from reversed(latest)
    last = latest[0]["seq"] if latest else 0
    while True:
        fresh = list(after(last))
        yield from fresh
        if fresh:
            last = fresh[-1]["seq"]
        time.sleep(interval)


def cmd_tail(args: argparse.Namespace) -> int:
    api = _api(args)
    if api is not None:
        rows = follow(api.newest, lambda seq: api.scan({}, after=seq), args.lines, args.interval)
    else:
        traces = _open(args.config)
        rows = follow(
            lambda n: traces.page(store.Filters(), n).rows,
            lambda seq: traces.scan(store.Filters(after_seq=seq)),
            args.lines,
            args.interval,
        )
    for trace in rows:  # until Ctrl-C (`gateway.cli.main` exits 130, quietly)
        print(line(trace), flush=True)
    return 0


def _run(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = command(args)
            return code
        except (ConfigError, store.StoreError, ValueError, AdminError) as exc:
            print(f"gateway traces: {exc}", file=sys.stderr)
            return 1

    return run


def add_commands(sub: Any) -> None:
    traces = sub.add_parser("traces", help="read the trace store").add_subparsers(dest="traces_command", required=True)
    export = traces.add_parser("export", help="write traces as JSONL rows, ready to become an evaluation dataset")
    _source_arguments(export)
    export.add_argument("--since", help="ISO 8601 time (UTC unless it says otherwise) or epoch seconds")
    export.add_argument("--until", help="ISO 8601 time or epoch seconds (exclusive)")
    export.add_argument("--model", help="requested model name")
    export.add_argument("--team")
    export.add_argument("--sample", type=int, help="a uniform random sample of N rows")
    export.add_argument("--seed", type=int, default=0, help="seed for --sample (same store and seed, same rows)")
    export.set_defaults(func=_run(cmd_export))
    tail = traces.add_parser("tail", help="print the latest traces, then follow new ones")
    _source_arguments(tail)
    tail.add_argument("--lines", "-n", type=int, default=10)
    tail.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    tail.set_defaults(func=_run(cmd_tail))


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="read the trace store this config names (default: $GATEWAY_CONFIG, else ./config.toml)")
    parser.add_argument("--url", help="read a running gateway's admin API (http://HOST:PORT) instead of the store file")
    parser.add_argument("--key", default=os.environ.get("GATEWAY_ADMIN_KEY"), help="admin API key for --url (default $GATEWAY_ADMIN_KEY)")
    parser.add_argument("--page-size", type=int, default=1000, help=argparse.SUPPRESS)
