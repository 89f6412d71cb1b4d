#!/usr/bin/env bash
# Cache hits per second on one core: a gateway whose only model has cache = "all", primed with the
# request wrk then sends over and over (the floor's chat.lua), so every measured request is a hit
# answered without any upstream. Same pinning as ../shared/bench/floor.sh: gateway on CPU 1, wrk on CPU 0.
#
#   loadtests/cache_hits.sh [--python PY] [--rounds N] [--seconds S] [--state URL]
#
# --state sets [state] cache (default memory; e.g. redis://127.0.0.1:6379/14?prefix=bench:).
# The hits are measured by floor.sh (BENCH_DIR, default ../shared/bench) as an `--other` target, so the
# table shows the floor, the pass-through gateway and the cache hits from the same alternating rounds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bench=${BENCH_DIR:-$here/../../shared/bench}
PY=${PY:-python3}; rounds=3; secs=5; state="memory"
while [ $# -gt 0 ]; do case $1 in
  --python) PY=$2; shift 2;; --rounds) rounds=$2; shift 2;; --seconds) secs=$2; shift 2;; --state) state=$2; shift 2;;
  *) echo "unknown arg $1" >&2; exit 2;; esac; done
. "$here/hit_gateway.sh"
hit_gateway 18500 "$state"
# measured by floor.sh itself, alternating with the floor and the pass-through gateway, same key
BENCH_KEY=$key bash "$bench/floor.sh" --python "$PY" --rounds "$rounds" --seconds "$secs" --other "cache-hit=$url"
curl -s http://127.0.0.1:18500/metrics | grep '^gateway_cache_results_total' || true
