"""The Redis limits backend, in-process: what an admission costs the gateway and Redis.

    .venv/bin/python loadtests/limits_bench.py [--url redis://127.0.0.1:6379/0]

Prints, for the four checks the floor.sh `--limits` team has (rpm, tpm, max_concurrent, a daily
budget): the worker's CPU per request for a burst of concurrent admissions and their settlements
(pipelined, as under load), the latency of one admission at a time (p50, p90), and Redis's own time
per admission script (`INFO commandstats`, which this resets).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import uvloop

from gateway.limits.rules import MINUTE_MS, Check, Settlement
from gateway.limits.store import RedisLimits, open_limits


def checks() -> list[Check]:
    return [
        Check("rate", "rpm:team:bench", 10**9, 1, MINUTE_MS),
        Check("rate", "tpm:team:bench", 10**12, 8, MINUTE_MS),
        Check("conc", "conc:team:bench", 100_000, 0, 660_000),
        Check("day", "usd:team:bench", 10**18, 5_000, 0),
    ]


async def one(store: RedisLimits, i: int) -> None:
    lease = f"{i:016x}"
    verdict = await store.admit(checks(), lease)
    store.settle(
        [
            Settlement("rate", "tpm:team:bench", 10**12, MINUTE_MS, -3),
            Settlement("conc", "conc:team:bench", 0, 0, 0, lease),
            *(Settlement("budget", key, 5_000, 100, 0) for key in verdict.periods),
        ]
    )


async def main(url: str) -> None:
    store = open_limits(f"{url}?prefix=bench-{uuid.uuid4().hex[:8]}:")
    assert isinstance(store, RedisLimits)
    await one(store, 0)  # scripts loaded, connection open
    await store.connection.redis.config_resetstat()
    for n in (200, 2000):
        cpu = time.process_time()
        await asyncio.gather(*(one(store, i) for i in range(n)))
        await store.idle()
        print(f"burst of {n}: {(time.process_time() - cpu) / n * 1e6:.0f} us of worker CPU per request")
    stats = (await store.connection.redis.info("commandstats"))["cmdstat_evalsha"]
    print(f"Redis: {stats['usec_per_call']:.1f} us per script call ({stats['calls']} calls: admissions and settlement batches)")
    latencies = []
    for i in range(2000):
        started = time.perf_counter()
        await one(store, i)
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.0005)
    latencies.sort()
    print(f"one at a time: p50 {latencies[1000] * 1000:.2f} ms, p90 {latencies[1800] * 1000:.2f} ms per admission")
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    uvloop.run(main(parser.parse_args().url))
