#!/usr/bin/env bash
# Usage: scripts/memory_bound_check.sh — issue 25's memory bound, checked at a small size (CI):
# a node with the default config except actors.max_live_payments = MAX_LIVE (300) and
# passivation after an hour (so only the bound can stop an actor) takes N (6000) creates from
# the load generator (MERCHANTS 10, CONNECTIONS 8) while its RSS is sampled every 0.5 s. By
# the middle of the run the bound is reached and the merchants' idempotency caches are full
# (10 x 200 keys by default); the second half of the run must leave the RSS within
# RSS_SLACK_PCT (10) % of the middle's, the live payment actors at most MAX_LIVE, and at
# least N - MAX_LIVE evictions counted. Exit 1 otherwise. Starts its node (PAYRAIL_BIN, default the release binary; PORT 18182) on the
# broker already running (scripts/broker.sh start) with its own database; stops it by PID.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
BIN="${PAYRAIL_BIN:-${CARGO_TARGET_DIR:-$PAYRAIL_ROOT/target}/release/payrail}"
PORT="${PORT:-18182}"
N="${N:-6000}"
MAX_LIVE="${MAX_LIVE:-300}"
MERCHANTS="${MERCHANTS:-10}"
CONNECTIONS="${CONNECTIONS:-8}"
RSS_SLACK_PCT="${RSS_SLACK_PCT:-10}"
[ -x "$BIN" ] || { log "no binary at $BIN; run cargo build --release --bin payrail"; exit 1; }
out="$PAYRAIL_STATE/memory-bound-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
trap stop_scratch_node EXIT
trap 'exit 130' INT TERM
export PAYRAIL__ACTORS__MAX_LIVE_PAYMENTS="$MAX_LIVE" PAYRAIL__ACTORS__PASSIVATE_AFTER_MS=3600000
start_scratch_node "$BIN" "$PORT" "$out/node.log"
unset PAYRAIL__ACTORS__MAX_LIVE_PAYMENTS PAYRAIL__ACTORS__PASSIVATE_AFTER_MS
rss() { awk '/VmRSS/{print $2}' "/proc/$SCRATCH_NODE_PID/status"; }
metric() { # series (name{labels}) -> value, 0 when absent
  curl -sf -H "Authorization: Bearer $SCRATCH_ADMIN_TOKEN" "http://127.0.0.1:$PORT/metrics" |
    awk -v s="$1" 'index($0, s " ") == 1 { print $2; found = 1 } END { if (!found) print 0 }'
}
rss_start="$(rss)"
( while kill -0 "$SCRATCH_NODE_PID" 2>/dev/null; do echo "$(date +%s.%N) $(rss)"; sleep 0.5; done ) >"$out/rss.txt" &
sampler=$!
began="$(date +%s.%N)"
"$BIN" --config "$PAYRAIL_ROOT/config.toml" loadtest --target "http://127.0.0.1:$PORT" \
  --admin-token "$SCRATCH_ADMIN_TOKEN" --scenario create --connections "$CONNECTIONS" \
  --max-requests "$N" --duration 600 --warmup 0 --merchants "$MERCHANTS" --json --no-progress \
  >"$out/loadtest.json"
ended="$(date +%s.%N)"
sleep 2 # evictions asked at the last creates finish
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
rss_end="$(rss)"
# The RSS sampled nearest the middle of the run.
rss_middle="$(awk -v m="$(python3 -c "print(($began + $ended) / 2)")" \
  'NR == 1 || (($1 - m) ^ 2 < best) { best = ($1 - m) ^ 2; v = $2 } END { print v }' "$out/rss.txt")"
ok="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['total']['ok'])" "$out/loadtest.json")"
live="$(metric 'payrail_actors_live{kind="payment"}')"
evicted="$(metric 'payrail_actor_evictions_total{kind="payment"}')"
log "RSS KiB: start $rss_start, middle of the run $rss_middle, end $rss_end ($out/rss.txt)"
log "$ok of $N creates succeeded; live payment actors $live (bound $MAX_LIVE), evicted $evicted"
python3 - "$rss_middle" "$rss_end" "$RSS_SLACK_PCT" "$live" "$MAX_LIVE" "$evicted" "$N" "$ok" <<'PY'
import sys
first, second, slack, live, bound, evicted, n, ok = (float(a) for a in sys.argv[1:])
problems = []
if ok != n:
    problems.append(f"{ok:.0f} of {n:.0f} creates succeeded")
if second > first * (1 + slack / 100):
    problems.append(f"RSS grew {100 * (second / first - 1):.1f} % over the second half of the run (allowed {slack:.0f} %)")
if live > bound:
    problems.append(f"{live:.0f} live payment actors, bound {bound:.0f}")
if evicted < n - bound:
    problems.append(f"{evicted:.0f} evictions, expected at least {n - bound:.0f}")
for p in problems:
    print(f"MEMORY CHECK FAILED: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"memory check: RSS {100 * (second / first - 1):+.1f} % over the second half, {live:.0f} live <= {bound:.0f}, {evicted:.0f} evicted")
PY
