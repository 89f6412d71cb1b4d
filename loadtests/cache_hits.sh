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
work=$(mktemp -d /tmp/cache-hits.XXXX); pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
key="sk-bench-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
sha=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
mkdir -p "$work/policies"
cat > "$work/gateway.toml" <<TOML
[server]
host = "127.0.0.1"
port = 18500
[state]
cache = "$state"
traces = "sqlite:///$work/traces.db"
[providers.demo]
kind = "mock"
[models."gpt-4o-mini"]
targets = [{ provider = "demo", model = "echo" }]
cache = "all"
[policies]
dir = "policies"
TOML
cat > "$work/policies/bench.toml" <<TOML
[teams.bench]
models = ["*"]
[[keys]]
name = "bench"
team = "bench"
sha256 = "$sha"
TOML
(exec taskset -c 1 "$PY" -m gateway serve --config "$work/gateway.toml" > "$work/gateway.log" 2>&1) & pid=$!
body=$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$bench/chat.lua")
url=http://127.0.0.1:18500/v1/chat/completions
prime() { curl -s -D - -o /dev/null -XPOST -H "Authorization: Bearer $key" -H 'content-type: application/json' -d "$body" "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-gateway-cache"{print $2}'; }
for _ in $(seq 1 100); do r=$(prime || true); [ -n "$r" ] && break; sleep 0.2; done
[ "$(prime)" = "hit" ] || { echo "priming failed: not a hit" >&2; tail -20 "$work/gateway.log" >&2; exit 1; }
# measured by floor.sh itself, alternating with the floor and the pass-through gateway, same key
BENCH_KEY=$key bash "$bench/floor.sh" --python "$PY" --rounds "$rounds" --seconds "$secs" --other "cache-hit=$url"
curl -s http://127.0.0.1:18500/metrics | grep '^gateway_cache_results_total' || true
