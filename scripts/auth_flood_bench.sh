#!/usr/bin/env bash
# Usage: scripts/auth_flood_bench.sh — issue 23's measurement of a merchant beside a flood of
# random API keys: starts a node (PAYRAIL_BIN, default the release binary) on loopback with
# its own database, on the broker already running (scripts/broker.sh start), then runs the
# same merchant load twice with `payrail loadtest` (creates, one merchant, open loop at RATE
# per s, default 200, over CONNECTIONS 16, DURATION_S 20 after WARMUP_S 3): first alone,
# then while FLOODERS (default 6) clients each send POST /v1/payments with a new random key
# as fast as they can over a keep-alive connection, each from its own loopback address
# (127.0.0.2, .3, …: the failed-authentication budget, http.failed_auth_per_minute, is per
# address). Prints each run's success rate, throughput, p50/p99/max, the node's CPU seconds
# and the flood's answers. The flooders run at nice FLOOD_NICE (default 19): on a two-core
# machine they share the CPUs with the node, and an attacker's own CPU is not the node's
# (FLOOD_NICE=0 measures them competing as equals).
# The flooders stop by themselves after the run's time (+5 s) and are waited for by PID;
# the node is stopped by PID and its database dropped. Results in $OUT (.payrail/auth-flood-*).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
BIN="${PAYRAIL_BIN:-${CARGO_TARGET_DIR:-$PAYRAIL_ROOT/target}/release/payrail}"
PORT="${PORT:-18181}"
RATE="${RATE:-200}"
CONNECTIONS="${CONNECTIONS:-16}"
DURATION_S="${DURATION_S:-20}"
WARMUP_S="${WARMUP_S:-3}"
FLOODERS="${FLOODERS:-6}"
FLOOD_NICE="${FLOOD_NICE:-19}"
[ -x "$BIN" ] || { log "no binary at $BIN; run cargo build --release --bin payrail"; exit 1; }
OUT="${OUT:-$PAYRAIL_STATE/auth-flood-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
flood_pids=""
cleanup() {
  for pid in $flood_pids; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  stop_scratch_node
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_scratch_node "$BIN" "$PORT" "$OUT/node.log"
log "node pid $SCRATCH_NODE_PID ready on 127.0.0.1:$PORT"

node_cpu_ticks() { awk '{print $14 + $15}' "/proc/$SCRATCH_NODE_PID/stat"; }

load() { # name
  local before
  before="$(node_cpu_ticks)"
  "$BIN" loadtest --target "http://127.0.0.1:$PORT" --admin-token "$SCRATCH_ADMIN_TOKEN" \
    --scenario create --merchants 1 --rate "$RATE" --connections "$CONNECTIONS" \
    --duration "$DURATION_S" --warmup "$WARMUP_S" --json --no-progress >"$OUT/$1.json"
  echo $(($(node_cpu_ticks) - before)) >"$OUT/$1.node-cpu-ticks"
}

log "merchant load alone: $RATE creates/s for ${DURATION_S} s"
load alone
seconds=$((WARMUP_S + DURATION_S + 5))
log "merchant load beside $FLOODERS clients flooding random keys (${seconds} s)"
for i in $(seq 1 "$FLOODERS"); do
  nice -n "$FLOOD_NICE" python3 - "$PORT" "127.0.0.$((i + 1))" "$seconds" >"$OUT/flood-$i.json" <<'PY' &
import http.client, json, secrets, sys, time
port, source, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
end = time.monotonic() + seconds
counts = {}
conn = None
while time.monotonic() < end:
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                              source_address=(source, 0))
        conn.request("POST", "/v1/payments", body=b'{"amount":100,"currency":"eur"}',
                     headers={"Authorization": "Bearer sk_test_" + secrets.token_hex(32),
                              "Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        key = str(response.status)
        if response.getheader("connection", "").lower() == "close":
            conn.close()
            conn = None
    except (OSError, http.client.HTTPException) as e:
        key = e.__class__.__name__
        conn = None
    counts[key] = counts.get(key, 0) + 1
print(json.dumps({"source": source, "seconds": seconds, "answers": counts}))
PY
  flood_pids="$flood_pids $!"
done
load flood
for pid in $flood_pids; do wait "$pid" || true; done
flood_pids=""
python3 - "$OUT" "$FLOODERS" <<'PY'
import json, os, sys
out, flooders = sys.argv[1], int(sys.argv[2])
hz = os.sysconf("SC_CLK_TCK")
print(f"{'run':<8}{'requests':>10}{'ok':>8}{'success %':>11}{'ok/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'node cpu s':>12}  errors")
for name in ("alone", "flood"):
    r = json.load(open(os.path.join(out, f"{name}.json")))
    lat = r["latency_us"]
    rate = 100.0 * r["ok"] / r["requests"] if r["requests"] else 0.0
    cpu = int(open(os.path.join(out, f"{name}.node-cpu-ticks")).read()) / hz
    print(f"{name:<8}{r['requests']:>10}{r['ok']:>8}{rate:>11.2f}{r['throughput_per_s']:>9.1f}"
          f"{lat['p50'] / 1e3:>9.2f}{lat['p99'] / 1e3:>9.2f}{lat['max'] / 1e3:>9.2f}{cpu:>12.1f}  {r['errors_by_kind']}")
total, answers = 0, {}
for i in range(1, flooders + 1):
    f = json.load(open(os.path.join(out, f"flood-{i}.json")))
    for k, v in f["answers"].items():
        answers[k] = answers.get(k, 0) + v
        total += v
    seconds = f["seconds"]
print(f"flood: {flooders} clients, {total} requests in {seconds:.0f} s ({total / seconds:.0f}/s): {answers}")
PY
