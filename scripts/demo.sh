#!/usr/bin/env bash
# The main job: brings up PostgreSQL (if stopped), the broker and one node, then runs a short
# real payment flow over HTTP and prints what happened. Stops what it started.
source "$(dirname "$0")/lib.sh"
cd "$PAYRAIL_ROOT"

ensure_postgres
ensure_broker
started_broker=0
[ -f "$PAYRAIL_STATE/broker.pid" ] && started_broker=1

log "building payrail"
cargo build --quiet --bin payrail

export PAYRAIL__HTTP__BIND="${PAYRAIL__HTTP__BIND:-127.0.0.1:18080}"
export PAYRAIL__HTTP__ADMIN_TOKEN="${PAYRAIL__HTTP__ADMIN_TOKEN:-demo-admin-token-0123456789}"
export PAYRAIL__JOURNAL__BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT"
export PAYRAIL__DATABASE__URL="$PAYRAIL_DATABASE_URL"
export PAYRAIL__PSP__WEBHOOK_SECRET="${PAYRAIL__PSP__WEBHOOK_SECRET:-whsec_demo_0123456789abcdef}"
sandbox_bind="${PAYRAIL_DEMO_SANDBOX_BIND:-127.0.0.1:18090}"
export PAYRAIL__PSP__SANDBOX_URL="http://$sandbox_bind"
base="http://$PAYRAIL__HTTP__BIND"

./target/debug/payrail psp-sandbox --bind "$sandbox_bind" \
  --webhook-url "$base/webhooks/psp/sandbox" --webhook-secret "$PAYRAIL__PSP__WEBHOOK_SECRET" \
  >"$PAYRAIL_STATE/demo-sandbox.log" 2>&1 &
sandbox_pid=$!
./target/debug/payrail node >"$PAYRAIL_STATE/demo-node.log" 2>&1 &
node_pid=$!
cleanup() {
  kill "$node_pid" "$sandbox_pid" 2>/dev/null || true
  wait "$node_pid" "$sandbox_pid" 2>/dev/null || true
  [ "$started_broker" = 1 ] && stop_broker
  return 0
}
trap cleanup EXIT

for _ in $(seq 1 120); do
  curl -fs "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$node_pid" 2>/dev/null || { cat "$PAYRAIL_STATE/demo-node.log"; exit 1; }
  sleep 0.5
done
curl -fs "$base/readyz" >/dev/null || { log "node not ready"; tail -50 "$PAYRAIL_STATE/demo-node.log"; exit 1; }
log "node ready at $base"

json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }

merchant="$(curl -fs -X POST "$base/v1/merchants" -H "Authorization: Bearer $PAYRAIL__HTTP__ADMIN_TOKEN" -d '{"name":"Demo Shop"}')"
key="$(echo "$merchant" | json '["api_key"]')"
log "merchant $(echo "$merchant" | json '["id"]') created"

idem="demo-$(date +%s%N)"
payment="$(curl -fs -X POST "$base/v1/payments" -H "Authorization: Bearer $key" -H "Idempotency-Key: $idem" \
  -d '{"amount":4999,"currency":"eur","order_no":"demo-1","customer_email":"buyer@example.com"}')"
id="$(echo "$payment" | json '["id"]')"
log "created (journaled before this reply): $payment"

replay="$(curl -fs -X POST "$base/v1/payments" -H "Authorization: Bearer $key" -H "Idempotency-Key: $idem" \
  -d '{"amount":4999,"currency":"eur","order_no":"demo-1","customer_email":"buyer@example.com"}')"
[ "$(echo "$replay" | json '["id"]')" = "$id" ] || { log "idempotent replay returned another payment"; exit 1; }
log "idempotent replay returned the same payment $id"

log "read back: $(curl -fs "$base/v1/payments/$id" -H "Authorization: Bearer $key")"
log "bad input is refused: $(curl -s -X POST "$base/v1/payments" -H "Authorization: Bearer $key" -d '{"amount":-1,"currency":"eur"}')"

confirmed="$(curl -fs -X POST "$base/v1/payments/$id/confirm" -H "Authorization: Bearer $key" -d '{"payment_method":"pm_card_visa","capture_method":"manual"}')"
log "confirmed with the sandbox PSP: status $(echo "$confirmed" | json '["status"]'), capturable $(echo "$confirmed" | json '["amount_capturable"]')"
captured="$(curl -fs -X POST "$base/v1/payments/$id/capture" -H "Authorization: Bearer $key" -d '{"amount":3000}')"
log "captured 3000 of 4999: status $(echo "$captured" | json '["status"]'), amount_captured $(echo "$captured" | json '["amount_captured"]')"
refund="$(curl -fs -X POST "$base/v1/payments/$id/refunds" -H "Authorization: Bearer $key" -d '{"amount":1000,"reason":"requested_by_customer"}')"
log "refunded: $refund"
over="$(curl -s -X POST "$base/v1/payments/$id/refunds" -H "Authorization: Bearer $key" -d '{"amount":2001}')"
log "refund above what is left is refused: $over"
final="$(curl -fs "$base/v1/payments/$id" -H "Authorization: Bearer $key")"
[ "$(echo "$final" | json '["amount_refunded"]')" = "1000" ] || { log "unexpected final state: $final"; exit 1; }
log "final: status $(echo "$final" | json '["status"]'), captured $(echo "$final" | json '["amount_captured"]'), refunded $(echo "$final" | json '["amount_refunded"]')"

today="$(date -u +%F)"
for _ in $(seq 1 40); do
  metrics="$(curl -fs "$base/v1/analytics/payment-metrics?date=$today" -H "Authorization: Bearer $key")"
  echo "$metrics" | grep -q '"created_count":1' && break
  sleep 0.25
done
log "analytics read model: $metrics"
echo "$metrics" | grep -q '"created_count":1' || { log "analytics did not count the payment"; exit 1; }
log "demo finished: one payment created, confirmed with the PSP, captured and refunded; every step journaled before its reply"
