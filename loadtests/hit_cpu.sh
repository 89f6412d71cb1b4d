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
. "$here/hit_gateway.sh"
hit_gateway 18501 memory
sed "s/sk-bench/$key/" "$bench/chat.lua" > "$work/chat.lua"
writer=$(pgrep -f "gateway.traces.writer" -P "$pid" | head -1)
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
