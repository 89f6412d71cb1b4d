# Sourced by cache_hits.sh and hit_cpu.sh: `hit_gateway PORT STATE` starts a gateway (pinned to CPU 1)
# whose only model (a `mock` provider) has cache = "all", [state] cache = STATE, and primes it with
# the floor's chat.lua request until the next one is a hit. Needs $PY and $bench; sets $work (the
# temporary folder: config, log, traces; removed on exit unless KEEP is set), $pid, $key and $url.
hit_gateway() {
  local port=$1 state=$2 sha body r
  work=$(mktemp -d /tmp/cache-hits.XXXX); pid=""
  trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
  key="sk-bench-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  sha=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
  mkdir -p "$work/policies"
  cat > "$work/gateway.toml" <<TOML
[server]
host = "127.0.0.1"
port = $port
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
  url=http://127.0.0.1:$port/v1/chat/completions
  prime() { curl -s -D - -o /dev/null -XPOST -H "Authorization: Bearer $key" -H 'content-type: application/json' -d "$body" "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-gateway-cache"{print $2}'; }
  for _ in $(seq 1 100); do r=$(prime || true); [ -n "$r" ] && break; sleep 0.2; done
  [ "$(prime)" = "hit" ] || { echo "priming failed: not a hit" >&2; tail -20 "$work/gateway.log" >&2; exit 1; }
}
