#!/usr/bin/env bash
# CPU time per cache hit, split by process: the worker and the trace writer, both pinned to CPU 1 as
# in cache_hits.sh (wrk on CPU 0, c=64). Throughput on a shared machine moves with the neighbours;
# CPU time per request moves much less, so this is the number to compare two builds by.
#
#   loadtests/hit_cpu.sh [--python PY] [--rounds N] [--seconds S]
#
# Prints, per round: requests/s, worker us/request, writer us/request; then the medians.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bench=${BENCH_DIR:-$here/../../shared/bench}
PY=${PY:-python3}; rounds=5; secs=8
while [ $# -gt 0 ]; do case $1 in
  --python) PY=$2; shift 2;; --rounds) rounds=$2; shift 2;; --seconds) secs=$2; shift 2;;
  *) echo "unknown arg $1" >&2; exit 2;; esac; done
work=$(mktemp -d /tmp/hit-cpu.XXXX); pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
key="sk-bench-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
sha=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
mkdir -p "$work/policies"
cat > "$work/gateway.toml" <<TOML
[server]
host = "127.0.0.1"
port = 18501
[state]
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
url=http://127.0.0.1:18501/v1/chat/completions
prime() { curl -s -D - -o /dev/null -XPOST -H "Authorization: Bearer $key" -H 'content-type: application/json' -d "$body" "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-gateway-cache"{print $2}'; }
for _ in $(seq 1 100); do r=$(prime || true); [ -n "$r" ] && break; sleep 0.2; done
[ "$(prime)" = "hit" ] || { echo "priming failed: not a hit" >&2; tail -20 "$work/gateway.log" >&2; exit 1; }
sed "s/sk-bench/$key/" "$bench/chat.lua" > "$work/chat.lua"
writer=$(pgrep -f "gateway.traces.writer" -P "$pid" | head -1)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
"$PY" - "$pid" "$writer" "$hz" "$rounds" "$secs" "$work/chat.lua" "$url" <<'PYEOF'
import re, statistics, subprocess, sys
pid, writer, hz, rounds, secs, lua, url = sys.argv[1:]
def cpu(p):  # utime + stime of the process and its threads, seconds
    fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / int(hz)
rows = []
for r in range(int(rounds)):
    w0, t0 = cpu(pid), cpu(writer)
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c64", f"-d{secs}s", "-s", lua, url], capture_output=True, text=True).stdout
    w1, t1 = cpu(pid), cpu(writer)
    n = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    rows.append((rps, (w1 - w0) / n * 1e6, (t1 - t0) / n * 1e6))
    print(f"round {r + 1}: {rps:8.0f} rps  worker {rows[-1][1]:6.1f} us  writer {rows[-1][2]:6.1f} us  total {rows[-1][1] + rows[-1][2]:6.1f} us")
med = [statistics.median(x[i] for x in rows) for i in range(3)]
print(f"median:  {med[0]:8.0f} rps  worker {med[1]:6.1f} us  writer {med[2]:6.1f} us  total {med[1] + med[2]:6.1f} us per hit")
PYEOF
