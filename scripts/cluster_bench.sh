#!/usr/bin/env bash
# Usage: scripts/cluster_bench.sh — creates per second of one cluster node vs three, on this
# machine and one broker (BENCHMARKS.md, "Cluster"), with the raw journal append rate
# measured in the same session as the reference.
#
# For each node count in $COUNTS (default "1 3"): a fresh database and topic namespace,
# `scripts/cluster.sh start` with that many nodes (release binary, cluster mode: leases,
# forwarding), then `payrail loadtest --scenario create` with every node in --target (so
# connection i talks to node i mod n, and about (n-1)/n of the creates are forwarded to
# their partition's owner), then `scripts/cluster.sh stop`. Then `payrail bench journal`.
# Env: PAYRAIL_BIN (target/release/payrail), CONNECTIONS (64), DURATION_S (15), WARMUP_S
# (5), MERCHANTS (120), PARTITIONS (6), COUNTS, OUT (default
# $PAYRAIL_STATE/cluster-bench-<time>). Uses the broker on $PAYRAIL_BROKER_PORT (started if
# none). Stops only what it started.
source "$(dirname "$0")/lib.sh"
cd "$PAYRAIL_ROOT"

BIN="${PAYRAIL_BIN:-${CARGO_TARGET_DIR:-target}/release/payrail}"
CONNECTIONS="${CONNECTIONS:-64}"
DURATION_S="${DURATION_S:-15}"
WARMUP_S="${WARMUP_S:-5}"
MERCHANTS="${MERCHANTS:-120}"
COUNTS="${COUNTS:-1 3}"
stamp="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-$PAYRAIL_STATE/cluster-bench-$stamp}"
export PAYRAIL__HTTP__ADMIN_TOKEN="cbench-admin-token-0123456789"
export PAYRAIL__JOURNAL__PARTITIONS="${PARTITIONS:-6}"
export PAYRAIL__JOURNAL__BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT"
export RUST_LOG="${NODE_RUST_LOG:-info,librdkafka=off,rdkafka=off}"

[ -x "$BIN" ] || { log "no release binary at $BIN; run cargo build --release"; exit 1; }
ensure_postgres
ensure_broker
mkdir -p "$OUT"

for n in $COUNTS; do
  db="payrail_cbench_${stamp//-/_}_$n"
  psql "$PAYRAIL_DATABASE_URL" -qtAX -c "CREATE DATABASE \"$db\"" >/dev/null
  state="$OUT/state-$n"
  mkdir -p "$state"
  log "$n node(s): database $db"
  NODES="$n" PAYRAIL_BIN="$BIN" PAYRAIL_STATE="$state" \
    PAYRAIL_DATABASE_URL="${PAYRAIL_DATABASE_URL%/*}/$db" \
    PAYRAIL__JOURNAL__NAMESPACE="cbench-$stamp-$n." \
    bash scripts/cluster.sh start >"$OUT/start-$n.txt" 2>&1 ||
    { cat "$OUT/start-$n.txt"; PAYRAIL_STATE="$state" bash scripts/cluster.sh stop; exit 1; }
  targets=""
  for i in $(seq 1 "$n"); do targets="${targets:+$targets,}http://127.0.0.1:$((18180 + i))"; done
  "$BIN" loadtest --target "$targets" --scenario create --connections "$CONNECTIONS" \
    --duration "$DURATION_S" --warmup "$WARMUP_S" --merchants "$MERCHANTS" --no-progress --json \
    >"$OUT/loadtest-$n.json" || log "loadtest with $n node(s) failed"
  PAYRAIL_STATE="$state" bash scripts/cluster.sh stop
  python3 - "$OUT/loadtest-$n.json" "$n" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
kinds = r.get("kinds") or r.get("by_kind") or {}
print(f"{sys.argv[2]} node(s): {json.dumps({k: r[k] for k in r if k in ('throughput_per_s', 'requests', 'errors', 'latency_ms')})[:400]}")
PY
done

"$BIN" bench journal --connections "$CONNECTIONS" --duration "$DURATION_S" --warmup "$WARMUP_S" \
  --json >"$OUT/journal.json" 2>/dev/null || log "bench journal failed"
log "results in $OUT"
