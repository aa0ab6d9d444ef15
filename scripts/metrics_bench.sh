#!/usr/bin/env bash
# Usage: scripts/metrics_bench.sh — issue 12's two measurements of /metrics, in one session:
#  1. agreement: /metrics scraped before and after a create loadtest (no warm-up, so both see
#     the same requests); its POST /v1/payments count and mean latency vs the loadtest's own.
#  2. cost: creates/s with metrics on and off (`metrics.enabled`), alternating on/off $RUNS
#     times (default 2), each run against a fresh node of the release binary.
# Env: PAYRAIL_BIN (target/release/payrail), CONNECTIONS (16), DURATION_S (15), MERCHANTS
# (100), RUNS (2), PORT (18080), OUT (.payrail/metrics-bench-<time>/). Stops what it started.
source "$(dirname "$0")/lib.sh"
cd "$PAYRAIL_ROOT"

BIN="${PAYRAIL_BIN:-${CARGO_TARGET_DIR:-target}/release/payrail}"
CONNECTIONS="${CONNECTIONS:-16}"
DURATION_S="${DURATION_S:-15}"
MERCHANTS="${MERCHANTS:-100}"
RUNS="${RUNS:-2}"
PORT="${PORT:-18080}"
stamp="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-$PAYRAIL_STATE/metrics-bench-$stamp}"
ADMIN_TOKEN="bench-admin-token-0123456789"

[ -x "$BIN" ] || { log "no release binary at $BIN; run cargo build --release"; exit 1; }
port_open "$PORT" && { log "127.0.0.1:$PORT is in use; set PORT"; exit 1; }
ensure_postgres
ensure_broker
mkdir -p "$OUT"
export PAYRAIL__JOURNAL__BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT"

node_pid=""
cleanup() {
  [ -n "$node_pid" ] && { kill "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null; }
  return 0
}
trap cleanup EXIT

start_node() { # name metrics_enabled
  local db="payrail_mbench_${stamp//-/_}_$1"
  psql "$PAYRAIL_DATABASE_URL" -qtAX -c "CREATE DATABASE \"$db\"" >/dev/null
  PAYRAIL__JOURNAL__NAMESPACE="mbench-$stamp-$1." \
  PAYRAIL__DATABASE__URL="${PAYRAIL_DATABASE_URL%/*}/$db" \
  PAYRAIL__HTTP__BIND="127.0.0.1:$PORT" \
  PAYRAIL__HTTP__ADMIN_TOKEN="$ADMIN_TOKEN" \
  PAYRAIL__METRICS__ENABLED="$2" \
  RUST_LOG="info,librdkafka=warn,rdkafka=warn" \
    "$BIN" node >"$OUT/node-$1.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 150); do
    kill -0 "$node_pid" 2>/dev/null || { log "node exited; see $OUT/node-$1.log"; exit 1; }
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return 0
    sleep 0.2
  done
  log "node not ready; see $OUT/node-$1.log"; exit 1
}
stop_node() { cleanup; node_pid=""; }
scrape() { curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$PORT/metrics" >"$1"; }
load() { # name warmup_s
  "$BIN" loadtest --target "http://127.0.0.1:$PORT" --admin-token "$ADMIN_TOKEN" \
    --scenario create --connections "$CONNECTIONS" --duration "$DURATION_S" --warmup "$2" \
    --merchants "$MERCHANTS" --json --no-progress >"$OUT/$1.json"
}

log "1. agreement: /metrics vs the loadtest's report"
start_node agree true
scrape "$OUT/agree.before.prom"
load agree 0
scrape "$OUT/agree.after.prom"
stop_node

log "2. cost: metrics on vs off, alternating, $RUNS runs each"
for run in $(seq 1 "$RUNS"); do
  for state in on off; do
    start_node "$state-r$run" "$([ "$state" = on ] && echo true || echo false)"
    load "$state-r$run" 3
    stop_node
  done
done

python3 - "$OUT" "$RUNS" <<'PY'
import json, os, re, sys
out, runs = sys.argv[1], int(sys.argv[2])
def prom(path, name):
    """Sum of a metric's samples for POST /v1/payments."""
    total = 0.0
    with open(path) as f:
        for line in f:
            if line.startswith(name) and 'method="POST"' in line and 'route="/v1/payments"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total
def load(name):
    with open(os.path.join(out, name + ".json")) as f:
        return json.load(f)
a = load("agree")
before, after = (os.path.join(out, f"agree.{p}.prom") for p in ("before", "after"))
count = prom(after, "payrail_http_requests_total{") - prom(before, "payrail_http_requests_total{")
secs = prom(after, "payrail_http_request_duration_seconds_sum{") - prom(before, "payrail_http_request_duration_seconds_sum{")
n = prom(after, "payrail_http_request_duration_seconds_count{") - prom(before, "payrail_http_request_duration_seconds_count{")
server_mean_ms = secs / n * 1e3 if n else float("nan")
client_mean_ms = a["latency_us"]["mean"] / 1e3
client_requests = a["total"]["requests"]
print(f"results in {out}")
print("agreement (POST /v1/payments, whole run, no warm-up):")
print(f"  requests: /metrics {count:.0f} vs loadtest {client_requests}  ({(count - client_requests) / client_requests * 100:+.2f} %)")
print(f"  mean latency: /metrics {server_mean_ms:.3f} ms vs loadtest {client_mean_ms:.3f} ms  ({(server_mean_ms - client_mean_ms) / client_mean_ms * 100:+.2f} %)")
print(f"  loadtest: {a['throughput_per_s']:.1f} creates/s, {a['errors']} errors")
on = [load(f"on-r{r}")["throughput_per_s"] for r in range(1, runs + 1)]
off = [load(f"off-r{r}")["throughput_per_s"] for r in range(1, runs + 1)]
print("cost (creates/s, c=%s):" % a["connections"])
for r in range(runs):
    print(f"  run {r + 1}: on {on[r]:.1f}  off {off[r]:.1f}")
mean_on, mean_off = sum(on) / runs, sum(off) / runs
print(f"  mean: on {mean_on:.1f}  off {mean_off:.1f}  on/off {mean_on / mean_off:.3f} ({(mean_on / mean_off - 1) * 100:+.2f} %)")
PY
