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
