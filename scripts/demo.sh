#!/usr/bin/env bash
# The main job: brings up PostgreSQL (if stopped), the broker and one node, then runs a short
# real payment flow over HTTP and prints what happened. Stops what it started.
#
# Every step checks the node's answer: a step that fails prints its name, the HTTP status,
# the response body and where the node's log is, and the script exits non-zero. The secrets
# are made fresh for each run (none ships). Ports: node PAYRAIL__HTTP__BIND (127.0.0.1:18080),
# sandbox PAYRAIL_DEMO_SANDBOX_BIND (127.0.0.1:18090), broker PAYRAIL_BROKER_PORT (9092).
source "$(dirname "$0")/lib.sh"
cd "$PAYRAIL_ROOT"

node_log="$PAYRAIL_STATE/demo-node.log"
sandbox_log="$PAYRAIL_STATE/demo-sandbox.log"
# No silent exit: whatever command fails outside a checked step says where.
trap 'log "FAILED at scripts/demo.sh line $LINENO: $BASH_COMMAND (node log: $node_log)"' ERR

ensure_postgres
ensure_broker
started_broker=0
[ -f "$PAYRAIL_STATE/broker.pid" ] && started_broker=1

log "building payrail"
cargo build --quiet --bin payrail

# A database and a topic namespace of its own for each run: consumer offsets stored by an
# earlier run (against another broker, e.g. a fresh clone's) must not point past this
# broker's journal, and nothing of a run is left in the shared database.
stamp="$(date +%Y%m%d%H%M%S)_$$"
demo_db="payrail_demo_$stamp"
psql "$PAYRAIL_DATABASE_URL" -qtAX -c "CREATE DATABASE \"$demo_db\"" >/dev/null
export PAYRAIL__DATABASE__URL="${PAYRAIL_DATABASE_URL%/*}/$demo_db"
export PAYRAIL__JOURNAL__NAMESPACE="demo-$stamp."

export PAYRAIL__HTTP__BIND="${PAYRAIL__HTTP__BIND:-127.0.0.1:18080}"
export PAYRAIL__HTTP__ADMIN_TOKEN="${PAYRAIL__HTTP__ADMIN_TOKEN:-$(random_secret admin_)}"
export PAYRAIL__JOURNAL__BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT"
export PAYRAIL__PSP__WEBHOOK_SECRET="${PAYRAIL__PSP__WEBHOOK_SECRET:-$(random_secret whsec_)}"
export PAYRAIL__CLUSTER__SECRET="${PAYRAIL__CLUSTER__SECRET:-$(random_secret cluster_)}"
sandbox_bind="${PAYRAIL_DEMO_SANDBOX_BIND:-127.0.0.1:18090}"
export PAYRAIL__PSP__SANDBOX_URL="http://$sandbox_bind"
base="http://$PAYRAIL__HTTP__BIND"

./target/debug/payrail psp-sandbox --bind "$sandbox_bind" \
  --webhook-url "$base/webhooks/psp/sandbox" --webhook-secret "$PAYRAIL__PSP__WEBHOOK_SECRET" \
  >"$sandbox_log" 2>&1 &
sandbox_pid=$!
./target/debug/payrail node >"$node_log" 2>&1 &
node_pid=$!
cleanup() {
  kill "$node_pid" "$sandbox_pid" 2>/dev/null || true
  wait "$node_pid" "$sandbox_pid" 2>/dev/null || true
  psql "$PAYRAIL_DATABASE_URL" -qtAX -c "DROP DATABASE IF EXISTS \"$demo_db\"" >/dev/null 2>&1 || true
  [ "$started_broker" = 1 ] && stop_broker
  return 0
}
trap cleanup EXIT

for _ in $(seq 1 120); do
  curl -fs "$base/readyz" >/dev/null 2>&1 && break
  if ! kill -0 "$node_pid" 2>/dev/null; then
    log "FAILED: the node exited before it was ready; the end of its log ($node_log):"
    tail -50 "$node_log" >&2
    exit 1
  fi
  sleep 0.5
done
if ! curl -fs "$base/readyz" >/dev/null; then
  log "FAILED: the node was not ready after 60 s; /readyz says: $(curl -s "$base/readyz")"
  log "the end of its log ($node_log):"
  tail -50 "$node_log" >&2
  exit 1
fi
log "node ready at $base"

# step NAME EXPECT METHOD PATH AUTH [BODY] [extra curl arguments…]
# Sends one request (a body always as JSON, with its Content-Type) and prints the answer's
# body. EXPECT is the status class the step needs: 2xx or 4xx. Anything else fails the demo
# with the step's name, the status, the body and the node's log.
step() {
  local name="$1" expect="$2" method="$3" path="$4" auth="$5" body="${6:-}"
  shift 6 2>/dev/null || shift $#
  local out status
  out="$(mktemp)"
  local args=(-s -o "$out" -w '%{http_code}' -X "$method" "$base$path" -H "Authorization: Bearer $auth")
  [ -n "$body" ] && args+=(-H "Content-Type: application/json" --data-binary "$body")
  status="$(curl "${args[@]}" "$@")" || status="000"
  if [ "${status:0:1}" != "${expect:0:1}" ]; then
    log "FAILED step \"$name\": $method $path answered HTTP $status (expected $expect)"
    log "response body: $(cat "$out")"
    log "node log: $node_log (last lines below)"
    tail -5 "$node_log" >&2
    rm -f "$out"
    exit 1
  fi
  cat "$out"
  rm -f "$out"
}

# field JSON KEY: one top-level field of a JSON object, or a failure that names it.
field() {
  python3 -c 'import sys, json; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2" ||
    { log "FAILED: no \"$2\" in $1"; exit 1; }
}

fail() { log "FAILED: $*"; log "node log: $node_log"; exit 1; }

# PAYRAIL_DEMO_SEND_ADMIN_TOKEN sends another admin token than the node's (to see a step fail).
admin="${PAYRAIL_DEMO_SEND_ADMIN_TOKEN:-$PAYRAIL__HTTP__ADMIN_TOKEN}"
merchant="$(step "create a merchant" 2xx POST /v1/merchants "$admin" '{"name":"Demo Shop"}')"
key="$(field "$merchant" api_key)"
log "merchant $(field "$merchant" id) created"

idem="demo-$(date +%s%N)"
body='{"amount":4999,"currency":"eur","order_no":"demo-1","customer_email":"buyer@example.com"}'
payment="$(step "create a payment" 2xx POST /v1/payments "$key" "$body" -H "Idempotency-Key: $idem")"
id="$(field "$payment" id)"
log "created (journaled before this reply): $payment"

replay="$(step "replay the create with the same Idempotency-Key" 2xx POST /v1/payments "$key" "$body" \
  -H "Idempotency-Key: $idem")"
[ "$(field "$replay" id)" = "$id" ] || fail "idempotent replay returned another payment: $replay"
log "idempotent replay returned the same payment $id"

log "read back: $(step "read the payment" 2xx GET "/v1/payments/$id" "$key")"
log "bad input is refused: $(step "refuse a negative amount" 4xx POST /v1/payments "$key" '{"amount":-1,"currency":"eur"}')"

confirmed="$(step "confirm with the sandbox PSP" 2xx POST "/v1/payments/$id/confirm" "$key" \
  '{"payment_method":"pm_card_visa","capture_method":"manual"}')"
log "confirmed with the sandbox PSP: status $(field "$confirmed" status), capturable $(field "$confirmed" amount_capturable)"
[ "$(field "$confirmed" status)" = "requires_capture" ] || fail "confirm did not authorize: $confirmed"

captured="$(step "capture 3000" 2xx POST "/v1/payments/$id/capture" "$key" '{"amount":3000}')"
log "captured 3000 of 4999: status $(field "$captured" status), amount_captured $(field "$captured" amount_captured)"

refund="$(step "refund 1000" 2xx POST "/v1/payments/$id/refunds" "$key" '{"amount":1000,"reason":"requested_by_customer"}')"
log "refunded: $refund"
over="$(step "refuse a refund above what is left" 4xx POST "/v1/payments/$id/refunds" "$key" '{"amount":2001}')"
log "refund above what is left is refused: $over"

final="$(step "read the final state" 2xx GET "/v1/payments/$id" "$key")"
[ "$(field "$final" amount_refunded)" = "1000" ] || fail "unexpected final state: $final"
log "final: status $(field "$final" status), captured $(field "$final" amount_captured), refunded $(field "$final" amount_refunded)"

today="$(date -u +%F)"
metrics=""
for _ in $(seq 1 40); do
  metrics="$(step "read the analytics" 2xx GET "/v1/analytics/payment-metrics?date=$today" "$key")"
  echo "$metrics" | grep -q '"created_count":1' && break
  sleep 0.25
done
log "analytics read model: $metrics"
echo "$metrics" | grep -q '"created_count":1' || fail "analytics did not count the payment: $metrics"
log "demo finished: one payment created, confirmed with the PSP, captured and refunded; every step journaled before its reply"
