#!/usr/bin/env bash
# Usage: scripts/cluster.sh start|status|stop — three payrail nodes on loopback sharing one
# broker and one PostgreSQL database (issue 11).
#   start   brings up PostgreSQL (if stopped) and the broker (installed on first use), builds
#           payrail, starts node-1..node-$NODES on 127.0.0.1:$BASE_PORT+1.., waits until
#           every journal partition is served, and prints `payrail cluster status`.
#   status  `payrail cluster status` (the lease table, and what each live node serves).
#   stop    stops the nodes this script started (SIGTERM: each hands its partitions over),
#           by the PIDs it recorded, and the broker if this script started it.
# Env: NODES (3), BASE_PORT (18180), PAYRAIL_BIN (default target/debug/payrail, built),
# PAYRAIL__JOURNAL__PARTITIONS (6), PAYRAIL__HTTP__ADMIN_TOKEN, PAYRAIL_BROKER_PORT,
# PAYRAIL_STATE, PAYRAIL_DATABASE_URL. Node logs: $PAYRAIL_STATE/cluster/node-N.log.
source "$(dirname "$0")/lib.sh"
cd "$PAYRAIL_ROOT"

NODES="${NODES:-3}"
BASE_PORT="${BASE_PORT:-18180}"
dir="$PAYRAIL_STATE/cluster"
mkdir -p "$dir"

# Secrets of this cluster, generated on first use and kept beside its state (mode 600), so
# that `status` and `stop` later speak to the nodes `start` brought up; the environment wins.
if [ ! -f "$dir/secrets.env" ]; then
  (umask 077
   { echo "admin_token=$(random_secret cladmin_)"
     echo "webhook_secret=$(random_secret whsec_)"
     echo "cluster_secret=$(random_secret cluster_)"; } > "$dir/secrets.env")
fi
# shellcheck disable=SC1091
source "$dir/secrets.env"
export PAYRAIL__HTTP__ADMIN_TOKEN="${PAYRAIL__HTTP__ADMIN_TOKEN:-$admin_token}"
export PAYRAIL__PSP__WEBHOOK_SECRET="${PAYRAIL__PSP__WEBHOOK_SECRET:-$webhook_secret}"
export PAYRAIL__CLUSTER__SECRET="${PAYRAIL__CLUSTER__SECRET:-$cluster_secret}"
export PAYRAIL__JOURNAL__BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT"
export PAYRAIL__JOURNAL__PARTITIONS="${PAYRAIL__JOURNAL__PARTITIONS:-6}"
export PAYRAIL__DATABASE__URL="$PAYRAIL_DATABASE_URL"
bin="${PAYRAIL_BIN:-$PAYRAIL_ROOT/target/debug/payrail}"

start() {
  ensure_postgres
  ensure_broker
  if [ -z "${PAYRAIL_BIN:-}" ]; then
    log "building payrail"
    cargo build --quiet --bin payrail
  fi
  for n in $(seq 1 "$NODES"); do
    local port=$((BASE_PORT + n)) pidfile="$dir/node-$n.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      log "node-$n already running (pid $(cat "$pidfile"))"
      continue
    fi
    if port_open "$port"; then
      log "port $port is taken by something else; set BASE_PORT"
      return 1
    fi
    PAYRAIL__CLUSTER__NODE_ID="node-$n" PAYRAIL__HTTP__BIND="127.0.0.1:$port" \
      PAYRAIL__CLUSTER__ADVERTISE_URL="http://127.0.0.1:$port" \
      "$bin" node >"$dir/node-$n.log" 2>&1 &
    echo $! >"$pidfile"
    log "node-$n: pid $!, http://127.0.0.1:$port (log $dir/node-$n.log)"
  done
  # Served = every partition appears in exactly one node's /v1/admin/cluster "serving".
  for _ in $(seq 1 120); do
    local served=0
    for n in $(seq 1 "$NODES"); do
      local count
      count="$(curl -fs "http://127.0.0.1:$((BASE_PORT + n))/v1/admin/cluster" \
        -H "Authorization: Bearer $PAYRAIL__HTTP__ADMIN_TOKEN" 2>/dev/null |
        python3 -c 'import sys,json; print(len(json.load(sys.stdin)["serving"]))' 2>/dev/null || echo 0)"
      served=$((served + count))
    done
    if [ "$served" -eq "$PAYRAIL__JOURNAL__PARTITIONS" ]; then
      log "all $served partitions served"
      "$bin" cluster status
      return 0
    fi
    sleep 0.5
  done
  log "the partitions were not all served within 60 s; see $dir/node-*.log"
  return 1
}

stop() {
  for pidfile in "$dir"/node-*.pid; do
    [ -f "$pidfile" ] || continue
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      log "stopped $(basename "$pidfile" .pid) (pid $pid)"
    fi
    rm -f "$pidfile"
  done
  [ -f "$PAYRAIL_STATE/broker.pid" ] && stop_broker
  return 0
}

case "${1:-}" in
  start) start ;;
  status) "$bin" cluster status ;;
  stop) stop ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
