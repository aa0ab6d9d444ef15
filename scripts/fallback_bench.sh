#!/usr/bin/env bash
# Usage: scripts/fallback_bench.sh — a create's throughput and latency with the journal up,
# in fallback (broker killed with SIGKILL) and after recovery, against one node started from
# the release binary, with the raw journal append rate measured in the same session as the
# reference (BENCHMARKS.md, "Journal fallback").
#
# Steps: a private broker ($PAYRAIL_BROKER_PORT, default 19894, state in $PAYRAIL_STATE) and
# a node (port $PORT, default 18880) with their own database and namespace;
#   1. `payrail bench journal` (the reference), then `payrail loadtest --scenario create`;
#   2. kill -9 the broker, wait until /readyz says "fallback", loadtest again;
#   3. restart the broker, time until the spool is replayed, loadtest again, and the raw
#      journal again.
# Env: PAYRAIL_BIN (target/release/payrail), CONNECTIONS (16), DURATION_S (10), WARMUP_S
# (3), MERCHANTS (100), OUT (results; default $PAYRAIL_STATE/fallback-bench-<time>).
# Stops only what it started, by PID.
export PAYRAIL_BROKER_PORT="${PAYRAIL_BROKER_PORT:-19894}"
export PAYRAIL_STATE="${PAYRAIL_STATE:-$(cd "$(dirname "$0")/.." && pwd)/.payrail/fallback-bench}"
source "$(dirname "$0")/lib.sh"
cd "$PAYRAIL_ROOT"

BIN="${PAYRAIL_BIN:-${CARGO_TARGET_DIR:-target}/release/payrail}"
CONNECTIONS="${CONNECTIONS:-16}"
DURATION_S="${DURATION_S:-10}"
WARMUP_S="${WARMUP_S:-3}"
MERCHANTS="${MERCHANTS:-100}"
PORT="${PORT:-18880}"
stamp="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-$PAYRAIL_STATE/fallback-bench-$stamp}"
ADMIN_TOKEN="bench-admin-token-0123456789"

[ -x "$BIN" ] || { log "no release binary at $BIN; run cargo build --release"; exit 1; }
port_open "$PORT" && { log "127.0.0.1:$PORT is in use; set PORT"; exit 1; }
ensure_postgres
port_open "$PAYRAIL_BROKER_PORT" &&
  { log "a broker already listens on $PAYRAIL_BROKER_PORT; this script kills its broker, so it needs its own port"; exit 1; }
ensure_broker
mkdir -p "$OUT"
export PAYRAIL__JOURNAL__BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT"

db="payrail_fbench_${stamp//-/_}"
psql "$PAYRAIL_DATABASE_URL" -qtAX -c "CREATE DATABASE \"$db\"" >/dev/null
db_url="${PAYRAIL_DATABASE_URL%/*}/$db"

node_pid=""
cleanup() {
  [ -n "$node_pid" ] && { kill "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null; }
  stop_broker
  return 0
}
trap cleanup EXIT

log "starting the node (release, database $db)"
PAYRAIL__JOURNAL__NAMESPACE="fbench-$stamp." \
PAYRAIL__DATABASE__URL="$db_url" \
PAYRAIL__HTTP__BIND="127.0.0.1:$PORT" \
PAYRAIL__HTTP__ADMIN_TOKEN="$ADMIN_TOKEN" \
RUST_LOG="info,librdkafka=off,rdkafka=off" \
  "$BIN" node >"$OUT/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 1 100); do
  kill -0 "$node_pid" 2>/dev/null || { log "node exited; see $OUT/node.log"; exit 1; }
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.3
done

journal() { # name
  log "$1: bench journal"
  "$BIN" bench journal --connections "$CONNECTIONS" --duration "$DURATION_S" --warmup "$WARMUP_S" \
    --merchants "$MERCHANTS" --json --no-progress >"$OUT/$1.json" || log "$1: bench journal failed"
}
creates() { # name
  log "$1: loadtest create"
  "$BIN" loadtest --target "http://127.0.0.1:$PORT" --admin-token "$ADMIN_TOKEN" \
    --scenario create --connections "$CONNECTIONS" --duration "$DURATION_S" --warmup "$WARMUP_S" \
    --merchants "$MERCHANTS" --json --no-progress >"$OUT/$1.json" 2>"$OUT/$1.err" ||
    log "$1: loadtest failed (see $OUT/$1.err)"
}
journal_status() {
  curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$PORT/v1/admin/journal"
}

journal journal-up
creates create-up

broker_pid="$(cat "$PAYRAIL_STATE/broker.pid")"
log "kill -9 the broker ($broker_pid)"
kill -9 "$broker_pid"
rm -f "$PAYRAIL_STATE/broker.pid"
for _ in $(seq 1 100); do
  curl -s "http://127.0.0.1:$PORT/readyz" | grep -q '"journal":"fallback"' && break
  sleep 0.1
done
creates create-fallback
journal_status >"$OUT/spool-before-replay.json"

log "restarting the broker"
ensure_broker
started=$(date +%s%N)
for _ in $(seq 1 6000); do
  journal_status | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["spool_rows"]==0 and not s["partitions_in_fallback"] else 1)' && break
  sleep 0.1
done
replay_ms=$(( ($(date +%s%N) - started) / 1000000 ))
echo "{\"replay_ms\": $replay_ms}" >"$OUT/replay.json"
creates create-recovered
journal journal-recovered

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f: return json.load(f)
    except (OSError, ValueError): return None
spool = load("spool-before-replay") or {}
print(f"results in {out}")
print(f"{'run':<20}{'ok/s':>9}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
for name in ["journal-up", "create-up", "create-fallback", "create-recovered", "journal-recovered"]:
    r = load(name)
    if not r:
        print(f"{name:<20}  (no result)"); continue
    l = r["latency_us"]
    print(f"{name:<20}{r['throughput_per_s']:>9.1f}{r['errors']:>8}{l['p50']/1e3:>9.2f}{l['p99']/1e3:>9.2f}{l['max']/1e3:>9.2f}")
ref = load("journal-up")
for name in ["create-up", "create-fallback", "create-recovered"]:
    r = load(name)
    if r and ref and ref["throughput_per_s"] > 0:
        print(f"{name} / raw journal (before the outage) = {r['throughput_per_s'] / ref['throughput_per_s']:.2f}")
print(f"spool rows when the broker came back: {spool.get('spool_rows')}; replayed in {load('replay')['replay_ms']} ms")
PY
