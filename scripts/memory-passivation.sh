#!/usr/bin/env bash
# Creates N payments through HTTP against a release node with short passivation and samples
# the node's resident memory; prints peak RSS. Own broker port, own database, own namespace.
# Usage: N=100000 PASSIVATE_MS=2000 bash scripts/memory-passivation.sh (PAYRAIL_BIN: another binary)
# (PASSIVATE_MS=86400000: no actor passivates during the run, so the RSS after the load over
# N is the memory per live payment actor.) Stops the broker if it started it.
source "$(dirname "$0")/lib.sh"
cd "$PAYRAIL_ROOT"
N="${N:-100000}"
PASSIVATE_MS="${PASSIVATE_MS:-2000}"
CONNECTIONS="${CONNECTIONS:-16}"
MAX_SECONDS="${MAX_SECONDS:-900}"
BIN="${PAYRAIL_BIN:-./target/release/payrail}"
ensure_postgres
broker_was_up=0
port_open "$PAYRAIL_BROKER_PORT" && broker_was_up=1
ensure_broker
db="payrail_mem_$$"
psql "$PAYRAIL_DATABASE_URL" -qtAX -c "CREATE DATABASE $db" >/dev/null
url="${PAYRAIL_DATABASE_URL%/*}/$db"
port=18181
token="memory-admin-token-0123456789"
PAYRAIL__JOURNAL__BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT" PAYRAIL__JOURNAL__NAMESPACE="mem-$$." \
PAYRAIL__DATABASE__URL="$url" PAYRAIL__HTTP__BIND="127.0.0.1:$port" PAYRAIL__HTTP__ADMIN_TOKEN="$token" \
PAYRAIL__ACTORS__PASSIVATE_AFTER_MS="$PASSIVATE_MS" RUST_LOG=warn \
  "$BIN" node >"$PAYRAIL_STATE/memory-node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; psql "$PAYRAIL_DATABASE_URL" -qtAX -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null; [ "$broker_was_up" = 1 ] || stop_broker' EXIT
for _ in $(seq 1 120); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
rss() { awk '/VmRSS/{print $2}' /proc/$node/status; }
echo "rss_kib_at_start $(rss)"
( while kill -0 $node 2>/dev/null; do echo "$(date +%s) $(rss)"; sleep 2; done ) >"$PAYRAIL_STATE/memory-samples.txt" &
sampler=$!
"$BIN" loadtest --target "http://127.0.0.1:$port" --admin-token "$token" --scenario create \
  --connections "$CONNECTIONS" --max-requests "$N" --duration "$MAX_SECONDS" --warmup 0 --merchants 100 --json --no-progress \
  >"$PAYRAIL_STATE/memory-loadtest.json"
echo "rss_kib_after_load $(rss)"
# Memory per live actor: PASSIVATE_MS beyond the run keeps every actor alive; no wait then.
if [ "$PASSIVATE_MS" -le 60000 ]; then
  sleep $(( PASSIVATE_MS / 1000 + 3 ))
  echo "rss_kib_after_passivation $(rss)"
else
  # Every actor still live: once the pools have caught up and the allocator has returned
  # what the load's buffers held, what is left is the actors' (SETTLE_S, default 10).
  sleep "${SETTLE_S:-10}"
  echo "rss_kib_settled $(rss)"
fi
echo "peak_rss_kib $(awk '/VmHWM/{print $2}' /proc/$node/status)"
kill $sampler 2>/dev/null
python3 -c "import json;r=json.load(open('$PAYRAIL_STATE/memory-loadtest.json'));print('created', r.get('total',{}).get('ok', r.get('ok')), 'throughput_per_s', r.get('throughput_per_s'))" 2>/dev/null || head -c 600 "$PAYRAIL_STATE/memory-loadtest.json"
