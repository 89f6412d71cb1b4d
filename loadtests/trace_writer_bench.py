"""The trace writer's CPU cost per record, measured in-process (no sockets, no other process).

Builds `--records` realistic `Record`s (a chat completion with a few messages, a response body,
usage, one attempt; capture "full" unless `--capture` says otherwise), serializes them the way
a worker's sink does (`orjson.dumps` of the dataclasses, in frames of `--frame` records), then
times what the writer does with them, stage by stage:

  decode   orjson.loads of the frames
  rows     record -> SQLite row (content capture, redaction)
  insert   insert_batch into a WAL SQLite database on disk (empty, or a copy of one holding `--preload`
           rows), in batches of the store's size
  store    decode + rows + insert: the writer's per-record cost without OTLP
  spans    record -> spans -> one OTLP protobuf export request per batch (the export thread's CPU)

Each stage runs `--runs` times; the median of its CPU time (process time: waits for the disk do not
count, other processes' load counts less than in wall time) is printed in microseconds per record.

    .venv/bin/python loadtests/trace_writer_bench.py [--records 5000] [--runs 7] [--capture full] [--preload 0]
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.pipeline.record import Attempt, Record
from gateway.providers.base import Usage
from gateway.traces import rows, spans, store, writer
from gateway.traces.otlp import export_request

PROVIDERS = {"up": ("openai", "127.0.0.1:18000")}
MAX_BYTES = 16384
RESOURCE = {"service.name": "llm-gateway", "service.instance.id": "bench:1"}


def record(i: int, capture: str) -> Record:
    r = Record(f"req-{i:08d}", "chat", 1_790_000_000.0 + i * 0.001, 0.0)
    r.model, r.key_name, r.team, r.policy_version, r.target = "gpt-4o-mini", "bench", "bench", "3f9a1c2b", "up/gpt-4o-mini"
    r.usage, r.cost_usd, r.priced, r.finish_reason = Usage(31, 9), 0.0000101, True, "stop"
    r.upstream_s, r.duration_s, r.overhead_s = 0.00123, 0.00191, 0.00068
    r.attempts = [Attempt("up/gpt-4o-mini", "gpt-4o-mini", 0.0003, 0.00123, 200, None, "127.0.0.1:18000")]
    r.trace_id, r.span_id = f"{i + 1:032x}", f"{i + 1:016x}"
    r.response_id, r.response_model, r.capture = "chatcmpl-mock", "gpt-4o-mini-2024-07-18", capture
    r.request_body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly and cite your sources."},
            {"role": "user", "content": "What is the capital of France? Also, how many people live there?"},
            {"role": "assistant", "content": "Paris is the capital of France; about 2.1 million people live in the city."},
            {"role": "user", "content": f"And in the metropolitan area? (question {i})"},
        ],
        "max_tokens": 256,
        "temperature": 0.2,
    }
    response = {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "About 13 million people live in the Paris metropolitan area."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40},
    }
    if capture == "full":  # the texts as the client sent and received them; the body's parameters beside
        r.request_json, r.response_json = orjson.dumps(r.request_body).decode(), orjson.dumps(response).decode()
    if capture != "metadata":
        r.request_body = {"temperature": 0.2, "max_tokens": 256}  # what the sink sends unless "metadata"
    return r


def frames(n: int, per_frame: int, capture: str) -> list[bytes]:
    records = [record(i, capture) for i in range(n)]
    return [
        orjson.dumps({"records": records[i : i + per_frame], "dropped": 0, "dropped_spans": 0}, default=lambda _: None)
        for i in range(0, n, per_frame)
    ]


def decode(payloads: list[bytes]) -> list[dict[str, Any]]:
    return [e for p in payloads for e in orjson.loads(p)["records"]]


def batches(entries: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [entries[i : i + size] for i in range(0, len(entries), size)]


def build_rows(entries: list[dict[str, Any]]) -> list[list[tuple[Any, ...]]]:
    return [[rows.row(e, MAX_BYTES) for e in batch] for batch in batches(entries, writer.STORE_BATCH)]


def encode_spans(entries: list[dict[str, Any]]) -> int:
    size = 0
    for batch in batches(entries, writer.EXPORT_BATCH):
        built = [s for e in batch for s in spans.build(e, PROVIDERS, MAX_BYTES)]
        size += len(export_request(RESOURCE, "llm-gateway", "0.1.0", built))
    return size


def timed(fn: Callable[[], object], n: int, runs: int, setup: Callable[[], object] | None = None) -> float:
    samples = []
    for _ in range(runs):
        if setup is not None:
            setup()
        gc.collect()
        t = time.process_time()  # CPU time: what the writer takes from the worker; disk waits are not
        fn()
        samples.append((time.process_time() - t) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--frame", type=int, default=100, help="records per worker frame (50 ms of traffic)")
    parser.add_argument("--preload", type=int, default=0, help="rows already in the store (its indexes' size matters)")
    parser.add_argument("--capture", choices=("none", "metadata", "full"), default="full")
    args = parser.parse_args()
    n = args.records
    if hasattr(writer, "tune_gc"):  # the writer process's garbage collector settings, where it has some
        writer.tune_gc()
    payloads = frames(n, args.frame, args.capture)
    entries = decode(payloads)
    built = build_rows(entries)
    with tempfile.TemporaryDirectory() as tmp:
        holder: list[Any] = []

        base = Path(tmp) / "base.db"
        traces = store.open_store(f"sqlite:///{base}")
        traces.migrate()
        rng = random.Random(1)
        flat = [r for batch in built for r in batch]
        for start in range(0, args.preload, n):  # with random request ids, as the gateway makes them
            traces.insert_batch([(f"{rng.getrandbits(128):032x}", *r[1:]) for r in flat[: args.preload - start]])
        traces.close()  # the last connection to close checkpoints the WAL into the file

        def fresh() -> None:
            for opened in holder:
                opened.close()
            path = Path(tmp) / f"t{len(holder)}.db"
            shutil.copy(base, path)
            holder.append(store.open_store(f"sqlite:///{path}"))
            holder[-1].migrate()

        def insert() -> None:
            for batch in built:
                holder[-1].insert_batch(batch)

        def store_path() -> None:
            for batch in batches(decode(payloads), writer.STORE_BATCH):
                holder[-1].insert_batch([rows.row(e, MAX_BYTES) for e in batch])

        results = {
            "decode": timed(lambda: decode(payloads), n, args.runs),
            "rows": timed(lambda: build_rows(entries), n, args.runs),
            "insert": timed(insert, n, args.runs, fresh),
            "store": timed(store_path, n, args.runs, fresh),
            "spans": timed(lambda: encode_spans(entries), n, args.runs),
        }
        for opened in holder:
            opened.close()
    print(f"gateway from {Path(rows.__file__).parent.parent}")
    print(f"{n} records, capture={args.capture}, {len(payloads[0]) // args.frame} bytes/record on the wire, median of {args.runs} runs")
    for stage, us in results.items():
        print(f"  {stage:<7} {us:7.1f} us/record")
    print(f"  store+spans {results['store'] + results['spans']:.1f} us/record")


if __name__ == "__main__":
    main()
