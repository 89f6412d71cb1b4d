"""Memory soak test of the gateway: RSS must stay small and flat under sustained load.

Starts loadtests/fast_upstream.py and the gateway (`<python> -m gateway serve --config <file>`,
with one openai-kind provider pointing at the upstream and one policy key), then sends two rounds
of --requests chat completions (every --stream-every'th one streamed) with --concurrency clients,
reading the gateway's resident memory (VmRSS of its process tree, from /proc) after each round.
Fails (exit 1) if RSS exceeds --max-rss-mb or grew more than --max-growth in the second round;
exit 2 if the setup failed or any request failed. All traffic stays on 127.0.0.1, and every round
is bounded by --round-timeout seconds.

    .venv/bin/python loadtests/memory.py [--python .venv/bin/python] [--requests 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
MODEL = "gpt-4o-mini"
CHAT = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ],
    "max_tokens": 32,
}
CHAT_BODY = json.dumps(CHAT).encode()
STREAM_BODY = json.dumps({**CHAT, "stream": True, "stream_options": {"include_usage": True}}).encode()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=sys.executable, help="interpreter that has the gateway installed")
    p.add_argument("--upstream-python", default=sys.executable, help="interpreter for fast_upstream.py")
    p.add_argument("--requests", type=int, default=100_000, help="requests per round (default 100000)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--stream-every", type=int, default=4, help="every Nth request is streamed; 0: none (default 4)")
    p.add_argument("--port", type=int, default=18400, help="gateway port")
    p.add_argument("--upstream-port", type=int, default=18000)
    p.add_argument("--round-timeout", type=float, default=900.0, help="seconds allowed per round")
    p.add_argument("--max-rss-mb", type=float, default=150.0)
    p.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth in round 2 (fraction)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (config, gateway log, traces)")
    return p.parse_args()


# ------------------------------------------------------------------ processes and memory


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if port_in_use(port):
            return True
        time.sleep(0.1)
    return False


def children(pid: int) -> list[int]:
    """All descendants of pid."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> tuple[float, dict[int, float]]:
    per = {p: rss_kb(p) / 1024 for p in [pid, *children(pid)]}
    return sum(per.values()), per


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def write_config(work: Path, port: int, upstream_port: int, key: str) -> Path:
    (work / "policies").mkdir()
    sha = hashlib.sha256(key.encode()).hexdigest()
    (work / "policies" / "bench.toml").write_text(
        f'[teams.bench]\nmodels = ["*"]\n\n[[keys]]\nname = "bench"\nteam = "bench"\nsha256 = "{sha}"\n'
    )
    config = work / "gateway.toml"
    config.write_text(
        f"""[server]
host = "{HOST}"
port = {port}
[state]
traces = "sqlite:///{work}/traces.db"
[providers.up]
kind = "openai"
base_url = "http://{HOST}:{upstream_port}/v1"
api_key = "env:BENCH_UPSTREAM_KEY"
[models."{MODEL}"]
targets = [{{ provider = "up", model = "{MODEL}" }}]
[policies]
dir = "policies"
"""
    )
    return config


# ------------------------------------------------------------------ load


@dataclass
class Round:
    ok: int = 0
    failed: int = 0
    elapsed: float = 0.0
    timed_out: bool = False
    samples: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.samples) < 5:
            self.samples.append(what)


async def one(session: aiohttp.ClientSession, url: str, stream: bool, result: Round) -> None:
    try:
        async with session.post(url, data=STREAM_BODY if stream else CHAT_BODY) as r:
            body = await r.read()
            if r.status != 200:
                result.fail(f"HTTP {r.status}: {body[:200]!r}")
            elif stream and not body.rstrip().endswith(b"data: [DONE]"):
                result.fail(f"stream without [DONE]: {body[-200:]!r}")
            elif not stream and b'"choices"' not in body:
                result.fail(f"no choices: {body[:200]!r}")
            else:
                result.ok += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.fail(f"{type(exc).__name__}: {exc}")


async def load(session: aiohttp.ClientSession, url: str, n: int, args: argparse.Namespace) -> Round:
    result = Round()
    counter = iter(range(n))
    every = args.stream_every

    async def worker() -> None:
        for i in counter:
            await one(session, url, every > 0 and i % every == every - 1, result)

    start = time.monotonic()
    tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), args.round_timeout)
    except TimeoutError:
        result.timed_out = True
    result.elapsed = time.monotonic() - start
    return result


async def wait_ready(session: aiohttp.ClientSession, url: str, gateway: subprocess.Popen[bytes], wait_s: float) -> str | None:
    """None once the gateway answers a chat completion with 200, else the last problem seen."""
    deadline = time.monotonic() + wait_s
    problem = "no answer"
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            return f"gateway exited with code {gateway.returncode}"
        try:
            async with session.post(url, data=CHAT_BODY) as r:
                if r.status == 200:
                    return None
                problem = f"HTTP {r.status}: {(await r.read())[:300]!r}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.2)
    return problem


async def soak(args: argparse.Namespace, gateway: subprocess.Popen[bytes], key: str) -> int:
    url = f"http://{HOST}:{args.port}/v1/chat/completions"
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        problem = await wait_ready(session, url, gateway, 60)
        if problem is not None:
            print(f"gateway not ready: {problem}", file=sys.stderr)
            return 2
        base, _ = tree_rss_mb(gateway.pid)
        print(f"gateway pid {gateway.pid} ready, RSS {base:.1f} MB")
        rss: list[float] = []
        for n in (1, 2):
            result = await load(session, url, args.requests, args)
            rate = (result.ok + result.failed) / result.elapsed if result.elapsed else 0.0
            print(
                f"round {n}: {result.ok} ok, {result.failed} failed in {result.elapsed:.1f} s ({rate:.0f} req/s)"
                + (" -- TIMED OUT" if result.timed_out else "")
            )
            for sample in result.samples:
                print(f"  e.g. {sample}", file=sys.stderr)
            if gateway.poll() is not None:
                print(f"gateway exited with code {gateway.returncode}", file=sys.stderr)
                return 2
            if result.failed or result.timed_out:
                return 2
            await asyncio.sleep(1.0)  # let in-flight work (trace writes...) settle
            total, per = tree_rss_mb(gateway.pid)
            rss.append(total)
            detail = "" if len(per) == 1 else " (" + ", ".join(f"pid {p}: {mb:.1f}" for p, mb in per.items()) + ")"
            print(f"RSS after round {n}: {total:.1f} MB{detail}")
    growth = (rss[1] - rss[0]) / rss[0] if rss[0] else 0.0
    print(f"RSS round 1: {rss[0]:.1f} MB, round 2: {rss[1]:.1f} MB, delta {rss[1] - rss[0]:+.1f} MB ({growth:+.1%})")
    verdict = 0
    if max(rss) > args.max_rss_mb:
        print(f"FAIL: RSS {max(rss):.1f} MB > {args.max_rss_mb:.0f} MB")
        verdict = 1
    if growth > args.max_growth:
        print(f"FAIL: RSS grew {growth:.1%} in round 2 (> {args.max_growth:.0%})")
        verdict = 1
    if verdict == 0:
        print("PASS")
    return verdict


def main() -> int:
    args = parse_args()
    for port in (args.port, args.upstream_port):
        if port_in_use(port):
            print(f"port {port} is already in use on {HOST}", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="gateway-memory."))
    key = "sk-bench-" + secrets.token_hex(8)
    config = write_config(work, args.port, args.upstream_port, key)
    upstream: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    code = 2
    try:
        upstream = subprocess.Popen(
            [args.upstream_python, str(HERE / "fast_upstream.py"), "--host", HOST, "--port", str(args.upstream_port)],
            stdout=subprocess.DEVNULL,
        )
        if not wait_port(args.upstream_port, upstream, 15):
            print("fast_upstream did not start", file=sys.stderr)
            return 2
        log = (work / "gateway.log").open("wb")
        gateway = subprocess.Popen(
            [args.python, "-m", "gateway", "serve", "--config", str(config)],
            cwd=REPO,
            env={**os.environ, "BENCH_UPSTREAM_KEY": "upstream-key"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            import uvloop
        except ImportError:
            code = asyncio.run(soak(args, gateway, key))
        else:
            code = uvloop.run(soak(args, gateway, key))
        return code
    except KeyboardInterrupt:
        return 130
    finally:
        stop(gateway)
        stop(upstream)
        if code == 2:
            with contextlib.suppress(OSError):
                tail = (work / "gateway.log").read_text(errors="replace").splitlines()[-20:]
                if tail:
                    print("--- gateway log (last lines) ---\n" + "\n".join(tail), file=sys.stderr)
        if args.keep or code != 0:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
