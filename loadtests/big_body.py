"""Big bodies beside small requests: does one tenant's 10 MB request slow everyone else's?

    .venv/bin/python loadtests/big_body.py [--rounds 3] [--seconds 8] [--rate 100] [--mb 10]
                                           [--every 0] [--text english|letters] [--guardrails]

Starts `loadtests/fast_upstream.py` and a gateway (free ports on 127.0.0.1, a temporary folder)
whose one team has `tpm` and a daily budget, so every request's prompt is counted with tiktoken.
Then, per round, two phases of `--seconds` each: small chat requests alone ("hi", sent open-loop at
`--rate` per second from this process, latency measured from when each was due), and the same
small requests while another process sends `--mb` MB chat bodies, one after another or one every
`--every` seconds (one message of random English words, or with `--text letters` one run of a
single letter, tiktoken's slowest case). Prints p50/p99/max of the small requests per phase, and the big bodies' count and latency.
`--guardrails` also gives the team deny rules and every redaction (screened on each body).
Run it against another tree with `PYTHONPATH=<tree>` (the gateway inherits the environment).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import random
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HOST = "127.0.0.1"
KEY = "sk-bench-big-bodies-0123456789"
ROOT = Path(__file__).resolve().parent.parent
GUARDRAILS = (
    '[teams.bench.guardrails]\nredact = ["secret", "email", "card", "phone"]\ndeny = [{ name = "nope", pattern = "forbidden thing" }]\n'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


def write_config(work: Path, port: int, upstream: int, guardrails: bool) -> Path:
    (work / "policies").mkdir()
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    team = '[teams.bench]\nmodels = ["*"]\ntpm = 1000000000\nbudget_usd_per_day = 1000000.0\n'
    (work / "policies" / "bench.toml").write_text(
        team + (GUARDRAILS if guardrails else "") + f'\n[[keys]]\nname = "bench"\nteam = "bench"\nsha256 = "{sha}"\n'
    )
    config = work / "gateway.toml"
    config.write_text(
        f'[server]\nhost = "{HOST}"\nport = {port}\nmax_body_bytes = 20000000\n'
        f'[state]\ntraces = "sqlite:///{work}/traces.db"\n'
        f'[providers.up]\nkind = "openai"\nbase_url = "http://{HOST}:{upstream}/v1"\napi_key = "env:BENCH_UPSTREAM_KEY"\n'
        '[models."gpt-4o-mini"]\ntargets = [{ provider = "up", model = "gpt-4o-mini" }]\n'
        '[policies]\ndir = "policies"\n'
    )
    return config


def big_body(mb: float, text: str) -> bytes:
    size = int(mb * 1_000_000)
    if text == "letters":
        content = "a" * size
    else:
        rnd = random.Random(7)
        words = ["".join(rnd.choice(string.ascii_lowercase) for _ in range(rnd.randint(2, 9))) for _ in range(5000)]
        content = " ".join(rnd.choices(words, k=size // 5))[:size]
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})


def send_big(url: str, body: bytes, every: float, stop: Any, results: Any) -> None:
    """In its own process: big bodies one after another (or one every `every` s) until told to stop."""
    import httpx

    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            started = time.perf_counter()
            answer = client.post(url, content=body, headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
            results.put((answer.status_code, time.perf_counter() - started))
            stop.wait(max(0.0, started + every - time.perf_counter()))


async def small_phase(url: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Open loop: a tiny request every 1/rate s; each latency counted from when it was due."""
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16})
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    latencies: list[float] = []
    failed = 0

    async def one(session: aiohttp.ClientSession, due: float) -> None:
        nonlocal failed
        async with session.post(url, data=body, headers=headers) as answer:
            await answer.read()
            if answer.status != 200:
                failed += 1
        latencies.append(time.perf_counter() - due)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(session, due)))
        await asyncio.gather(*tasks)
    return latencies, failed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def report(label: str, latencies: list[float], failed: int) -> None:
    p50, p99, top = percentile(latencies, 0.5), percentile(latencies, 0.99), max(latencies) * 1000
    print(f"  {label:28s} n={len(latencies):5d} p50 {p50:6.1f} ms  p99 {p99:7.1f} ms  max {top:7.1f} ms  failed {failed}", flush=True)


def run_rounds(args: argparse.Namespace, url: str) -> None:
    body = big_body(args.mb, args.text)
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}", flush=True)
        report("small alone", *asyncio.run(small_phase(url, args.rate, args.seconds)))
        context = multiprocessing.get_context("spawn")
        stop, results = context.Event(), context.Queue()
        sender = context.Process(target=send_big, args=(url, body, args.every, stop, results))
        sender.start()
        time.sleep(0.5)  # the first big body is on its way
        report(f"small beside {args.mb:g} MB bodies", *asyncio.run(small_phase(url, args.rate, args.seconds)))
        stop.set()
        sender.join(180)
        bigs = [results.get() for _ in range(results.qsize())]
        statuses = sorted({status for status, _ in bigs})
        took = ", ".join(f"{seconds:.2f}" for _, seconds in bigs)
        print(f"  big bodies: {len(bigs)} (statuses {statuses}), each took {took} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=100.0, help="small requests per second")
    parser.add_argument("--mb", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=0.0, help="seconds from one big body to the next (0: back to back)")
    parser.add_argument("--text", choices=("english", "letters"), default="english")
    parser.add_argument("--guardrails", action="store_true")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="big-body-") as folder:
        work = Path(folder)
        port, upstream_port = free_port(), free_port()
        config = write_config(work, port, upstream_port, args.guardrails)
        env = {**os.environ, "BENCH_UPSTREAM_KEY": "sk-upstream-bench"}
        log = (work / "gateway.log").open("wb")
        upstream = subprocess.Popen([args.python, str(ROOT / "loadtests" / "fast_upstream.py"), "--port", str(upstream_port)])
        gateway = subprocess.Popen(
            [args.python, "-m", "gateway", "serve", "--config", str(config)], env=env, stdout=log, stderr=log, cwd=work
        )
        try:
            wait_port(upstream_port, upstream)
            wait_port(port, gateway)
            url = f"http://{HOST}:{port}/v1/chat/completions"
            asyncio.run(small_phase(url, 50, 1.0))  # warm: tiktoken's encoding loaded, connections open
            run_rounds(args, url)
        finally:
            for proc in (gateway, upstream):
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
