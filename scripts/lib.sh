# Shared helpers for payrail's scripts. Sourced, not run.
set -euo pipefail

PAYRAIL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PAYRAIL_STATE="${PAYRAIL_STATE:-$PAYRAIL_ROOT/.payrail}"
PAYRAIL_BROKER_PORT="${PAYRAIL_BROKER_PORT:-9092}"
PAYRAIL_DATABASE_URL="${PAYRAIL_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
TANSU_VERSION="0.6.0"
export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p "$PAYRAIL_STATE"

log() { printf '[payrail] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# PostgreSQL: use it when it answers; start it when installed but stopped; say what to do
# when it is absent.
ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_isready -h 127.0.0.1 -p 5432 -q; then
    return 0
  fi
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    log "starting PostgreSQL $version (installed but stopped)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
      pg_isready -h 127.0.0.1 -p 5432 -q && return 0
      sleep 1
    done
  fi
  log "PostgreSQL is not reachable at 127.0.0.1:5432."
  log "Install it (apt-get install postgresql), allow trust auth for local connections,"
  log "or point PAYRAIL_DATABASE_URL / PAYRAIL__DATABASE__URL at a running server."
  return 1
}

# A random secret with prefix $1 (48 hex digits): scripts never run with config.toml's
# development placeholders.
random_secret() { python3 -c "import secrets; print('$1' + secrets.token_hex(24))"; }

# tansu, the Kafka-compatible broker used in development and CI (see DESIGN.md).
ensure_tansu_installed() {
  if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  log "installing the broker, tansu $TANSU_VERSION (cargo install, once per machine): about 25-30 minutes on two cores, longer beside another build; later runs start at once"
  cargo install tansu --locked --version "$TANSU_VERSION" --features libsql
}

# Starts tansu on 127.0.0.1:$PAYRAIL_BROKER_PORT with its data in $PAYRAIL_STATE/broker,
# unless something already listens there. Records the PID only of a broker it started.
ensure_broker() {
  ensure_tansu_installed
  if port_open "$PAYRAIL_BROKER_PORT"; then
    log "a broker already listens on 127.0.0.1:$PAYRAIL_BROKER_PORT; using it"
    index_broker_headers
    return 0
  fi
  local dir="$PAYRAIL_STATE/broker"
  mkdir -p "$dir"
  log "starting tansu on 127.0.0.1:$PAYRAIL_BROKER_PORT (data: $dir/tansu.db)"
  (
    cd "$dir"
    nohup tansu broker \
      --listener-url "tcp://127.0.0.1:$PAYRAIL_BROKER_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$PAYRAIL_BROKER_PORT" \
      --storage-engine "sqlite://tansu.db" >"$dir/tansu.log" 2>&1 &
    echo $! >"$PAYRAIL_STATE/broker.pid"
  )
  for _ in $(seq 1 50); do
    if port_open "$PAYRAIL_BROKER_PORT"; then
      index_broker_headers
      return 0
    fi
    sleep 0.2
  done
  log "tansu did not start; see $dir/tansu.log"
  return 1
}

# tansu 0.6's sqlite schema has no index on its `header` table, and its fetch path looks
# up each fetched record's headers with `... where h.topition = r.topition and
# h.offset_id = r.offset_id`: without an index every fetched record scans every header
# ever written (4 per payrail record), so consumers slow down as the broker's store grows.
# This adds the missing index to the broker's own sqlite file (idempotent; sqlite takes the
# write lock for it, waiting up to 30 s if tansu is writing). Only for the broker these
# scripts keep in $PAYRAIL_STATE/broker. PAYRAIL_TANSU_HEADER_INDEX=0 skips it (to measure
# the difference, see BENCHMARKS.md).
index_broker_headers() {
  local db="$PAYRAIL_STATE/broker/tansu.db"
  [ -f "$db" ] || return 0
  [ "${PAYRAIL_TANSU_HEADER_INDEX:-1}" = 0 ] && { log "not indexing tansu's header table"; return 0; }
  for _ in $(seq 1 50); do
    python3 "$(dirname "${BASH_SOURCE[0]}")/index_tansu_headers.py" "$db" && return 0
    sleep 0.2
  done
  log "could not index tansu's header table in $db (consumers will slow down as it grows)"
}

# Stops the broker only if these scripts started it.
stop_broker() {
  local pidfile="$PAYRAIL_STATE/broker.pid"
  if [ -f "$pidfile" ]; then
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null && ps -p "$pid" -o comm= | grep -q tansu; then
      log "stopping tansu (pid $pid)"
      kill "$pid" || true
    fi
    rm -f "$pidfile"
  fi
}

# A node for one measurement (scripts/internal_flood_rss.sh, scripts/auth_flood_bench.sh):
# binary $1 on 127.0.0.1:$2, its log in $3, on the broker already listening on
# $PAYRAIL_BROKER_PORT (never started nor stopped here: it is shared), with a database, a
# topic namespace and secrets of its own. Sets SCRATCH_NODE_PID, SCRATCH_NODE_DB and
# SCRATCH_ADMIN_TOKEN; stop_scratch_node stops it (by PID) and drops its database.
SCRATCH_NODE_PID=""
SCRATCH_NODE_DB=""
SCRATCH_ADMIN_TOKEN=""
start_scratch_node() { # bin port log
  port_open "$PAYRAIL_BROKER_PORT" || {
    log "no broker on 127.0.0.1:$PAYRAIL_BROKER_PORT: start it with scripts/broker.sh start"
    return 1
  }
  ! port_open "$2" || { log "127.0.0.1:$2 is in use; set PORT to a free port"; return 1; }
  local stamp
  stamp="$(date +%Y%m%d%H%M%S)_$$"
  SCRATCH_NODE_DB="payrail_scratch_$stamp"
  SCRATCH_ADMIN_TOKEN="$(random_secret admin_)"
  psql "$PAYRAIL_DATABASE_URL" -qtAX -c "CREATE DATABASE \"$SCRATCH_NODE_DB\"" >/dev/null
  PAYRAIL__DATABASE__URL="${PAYRAIL_DATABASE_URL%/*}/$SCRATCH_NODE_DB" \
    PAYRAIL__JOURNAL__BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT" \
    PAYRAIL__JOURNAL__NAMESPACE="scratch-$stamp." \
    PAYRAIL__HTTP__BIND="127.0.0.1:$2" \
    PAYRAIL__HTTP__ADMIN_TOKEN="$SCRATCH_ADMIN_TOKEN" \
    PAYRAIL__PSP__WEBHOOK_SECRET="$(random_secret whsec_)" \
    PAYRAIL__CLUSTER__SECRET="$(random_secret cluster_)" \
    RUST_LOG="${NODE_RUST_LOG:-warn}" \
    "$1" --config "$PAYRAIL_ROOT/config.toml" node >"$3" 2>&1 &
  SCRATCH_NODE_PID=$!
  for _ in $(seq 1 300); do
    kill -0 "$SCRATCH_NODE_PID" 2>/dev/null || { log "node exited; see $3"; return 1; }
    curl -sf "http://127.0.0.1:$2/readyz" >/dev/null && return 0
    sleep 0.2
  done
  log "node not ready after 60 s; see $3"
  return 1
}

stop_scratch_node() {
  if [ -n "$SCRATCH_NODE_PID" ]; then
    kill "$SCRATCH_NODE_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SCRATCH_NODE_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$SCRATCH_NODE_PID" 2>/dev/null || true
    wait "$SCRATCH_NODE_PID" 2>/dev/null || true
    SCRATCH_NODE_PID=""
  fi
  if [ -n "$SCRATCH_NODE_DB" ]; then
    psql "$PAYRAIL_DATABASE_URL" -qtAX -c "DROP DATABASE IF EXISTS \"$SCRATCH_NODE_DB\"" >/dev/null || true
    SCRATCH_NODE_DB=""
  fi
}

# Prints, for each failed test in cargo test's output $1, its name, the last lines it printed
# before its panic and the panic's first lines (no backtrace): CI shows the end of the output.
summarize_failures() {
  log "failed tests and their panics (full output: $1):"
  awk '
    function cut(line) { return "    " substr(line, 1, 400) }
    # A block that ends without a panic line (a test returning Err) shows its last lines.
    function flush() { if (!panic) for (i = 0; i < kept; i++) print cut(before[i]); kept = 0 }
    /^---- .* stdout ----$/ { if (block) flush(); print "  FAILED " $2; block = 1; panic = 0; kept = 0; next }
    !block { next }
    /^stack backtrace:/ || /^note: / || /^failures:$/ || /^---- / || panic > 12 { flush(); block = 0; next }
    / panicked at / { for (i = 0; i < kept; i++) print cut(before[i]); kept = 0; panic = 1 }
    panic { if (NF) { print cut($0); panic++ } next }
    NF { if (kept == 6) { for (i = 1; i < 6; i++) before[i - 1] = before[i]; kept = 5 } before[kept++] = $0 }
    END { if (block) flush() }
  ' "$1" >&2
}
