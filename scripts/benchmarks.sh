#!/usr/bin/env bash
# Usage: scripts/benchmarks.sh — the measurements of BENCHMARKS.md in one session, one after
# the other. For each node profile of $PROFILES (default "pools nopools"):
#   pools          a node running all four pools (one shared fetch, the default config)
#   pools-own-fetch  the same with pools.shared_fetch = false (each pool fetches alone)
#   nopools        the write path alone (pools.run = [])
# a fresh private broker (tansu, its own sqlite store under $OUT/<profile>/, port
# $BENCH_BROKER_PORT, default 19692) and a node from the release binary (own database and
# namespace) are started; then for each concurrency of $CONNECTIONS (default "16 100"),
# $RUNS times (default 2): the raw journal reference (`payrail bench journal`), then each
# scenario (`payrail loadtest`): $SCENARIOS (default "create lifecycle mixed"; add
# stripe-create for the Stripe-compatible create, read for the node's per-request floor: GETs
# answered from live actors) for the pool profiles, create (and stripe-create and read if
# asked for) only for nopools. A PSP sandbox is started for lifecycle and mixed. CPU
# ticks of the broker, node and PostgreSQL are read before and after every run. Everything
# started is stopped at the end (node, sandbox, broker), by PID.
# Results (one JSON per run) go to $OUT (default .payrail/bench-<time>/), a summary to stdout:
# throughput and latency, CPU per request per process, creates ÷ raw journal, pools' lag.
# Env: PAYRAIL_BIN (default target/release/payrail), DURATION_S (10), WARMUP_S (3),
# MERCHANTS (100), NODE_RUST_LOG ("info"), LOADTEST_FLAGS (extra loadtest flags), NODE_ENV
# (extra VAR=value settings for the node, e.g. "PAYRAIL__LOG__ACCESS_LOG=false"), ORDER
# (journal-first | create-first), CONFIG (the config file every command reads, default ./config.toml;
# for a binary of another commit, that commit's: `git show REV:config.toml >file`), PORT (node, 18080), SANDBOX_PORT (18091), CHECK=1 (exit 1
# unless every run produced a result with successful requests: the CI check that keeps this
# script runnable, with short durations and the debug binary).
# PAYRAIL_BROKER_PORT: use the broker already listening there instead of a private one.
# GATE=SECTION: exit 1 when a ratio of this session falls more than the tolerance below the
# one recorded under SECTION of $BASELINE (default scripts/bench_baseline.json); RECORD=SECTION
# records this session's ratios there instead. scripts/bench_gate.sh runs both with the
# settings each section was recorded with.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
stamp="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-$ROOT/.payrail/bench-$stamp}"
# Relative to where it was called from; the script works from the repository root.
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
OWN_BROKER_PORT="${PAYRAIL_BROKER_PORT:-}"
export PAYRAIL_STATE="$OUT/broker-state"
export PAYRAIL_BROKER_PORT="${OWN_BROKER_PORT:-${BENCH_BROKER_PORT:-19692}}"
source "$ROOT/scripts/lib.sh"
cd "$PAYRAIL_ROOT"

BIN="${PAYRAIL_BIN:-${CARGO_TARGET_DIR:-target}/release/payrail}"
PROFILES="${PROFILES:-pools nopools}"
CONNECTIONS="${CONNECTIONS:-16 100}"
RUNS="${RUNS:-2}"
DURATION_S="${DURATION_S:-10}"
WARMUP_S="${WARMUP_S:-3}"
MERCHANTS="${MERCHANTS:-100}"
NODE_RUST_LOG="${NODE_RUST_LOG:-info}"
PORT="${PORT:-18080}"
SCENARIOS="${SCENARIOS:-create lifecycle mixed}"
SANDBOX_PORT="${SANDBOX_PORT:-18091}"
CONFIG="${CONFIG:-$PAYRAIL_ROOT/config.toml}"
ADMIN_TOKEN="bench-admin-token-0123456789"
WEBHOOK_SECRET="whsec_bench_0123456789abcdef"
for scenario in $SCENARIOS; do
  case "$scenario" in
    create | lifecycle | mixed | stripe-create | read) ;;
    *) log "unknown scenario $scenario in SCENARIOS (create, lifecycle, mixed, stripe-create, read)"; exit 1 ;;
  esac
done
for profile in $PROFILES; do
  case "$profile" in
    pools | pools-own-fetch | nopools) ;;
    *) log "unknown profile $profile in PROFILES (pools, pools-own-fetch, nopools)"; exit 1 ;;
  esac
done

[ -x "$BIN" ] || { log "no binary at $BIN; run cargo build --release"; exit 1; }
for port in "$PORT" "$SANDBOX_PORT"; do
  if port_open "$port"; then
    log "127.0.0.1:$port is already in use; set PORT / SANDBOX_PORT to free ports"
    exit 1
  fi
done
if [ -z "$OWN_BROKER_PORT" ] && port_open "$PAYRAIL_BROKER_PORT"; then
  log "127.0.0.1:$PAYRAIL_BROKER_PORT is in use; set BENCH_BROKER_PORT to a free port"
  exit 1
fi
ensure_postgres
ensure_tansu_installed
mkdir -p "$OUT"
export PAYRAIL__JOURNAL__BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT"

# Stop only what this script started, by PID.
node_pid=""
sandbox_pid=""
broker_started=0
stop_node() {
  for pid in $node_pid $sandbox_pid; do kill "$pid" 2>/dev/null || true; done
  for pid in $node_pid $sandbox_pid; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { log "pid $pid still running 20 s after SIGTERM; SIGKILL"; kill -9 "$pid" 2>/dev/null || true; }
    wait "$pid" 2>/dev/null || true
  done
  node_pid=""
  sandbox_pid=""
}
stop_private_broker() {
  if [ "$broker_started" = 1 ]; then
    stop_broker
    for _ in $(seq 1 50); do port_open "$PAYRAIL_BROKER_PORT" || break; sleep 0.2; done
    broker_started=0
  fi
}
cleanup() {
  stop_node
  stop_private_broker
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM # exit runs the EXIT trap, so a stopped run stops what it started

# A fresh broker store per profile, so no profile pays for another's records.
start_broker() { # profile
  if [ -n "$OWN_BROKER_PORT" ]; then
    ensure_broker
    return 0
  fi
  export PAYRAIL_STATE="$OUT/$1/broker-state"
  mkdir -p "$PAYRAIL_STATE"
  ensure_broker
  broker_started=1
}

start_sandbox() { # dir
  log "starting the PSP sandbox on 127.0.0.1:$SANDBOX_PORT"
  "$BIN" --config "$CONFIG" psp-sandbox --bind "127.0.0.1:$SANDBOX_PORT" \
    --webhook-url "http://127.0.0.1:$PORT/webhooks/psp/sandbox" --webhook-secret "$WEBHOOK_SECRET" \
    >"$1/sandbox.log" 2>&1 &
  sandbox_pid=$!
  for _ in $(seq 1 100); do
    port_open "$SANDBOX_PORT" && return 0
    kill -0 "$sandbox_pid" 2>/dev/null || { log "sandbox exited; see $1/sandbox.log"; exit 1; }
    sleep 0.1
  done
}

start_node() { # profile dir
  local db="payrail_bench_${stamp//-/_}_${1//-/_}"
  psql "$PAYRAIL_DATABASE_URL" -qtAX -c "CREATE DATABASE \"$db\"" >/dev/null
  local profile_env=()
  case "$1" in
    pools-own-fetch) profile_env=(PAYRAIL__POOLS__SHARED_FETCH=false) ;;
    nopools) profile_env=("PAYRAIL__POOLS__RUN=[]") ;;
  esac
  log "starting the node (profile $1, database $db)"
  # shellcheck disable=SC2086 # NODE_ENV holds VAR=value words on purpose
  env "${profile_env[@]}" ${NODE_ENV:-} \
    PAYRAIL__JOURNAL__NAMESPACE="bench-$stamp-$1." \
    PAYRAIL__DATABASE__URL="${PAYRAIL_DATABASE_URL%/*}/$db" \
    PAYRAIL__HTTP__BIND="127.0.0.1:$PORT" \
    PAYRAIL__HTTP__ADMIN_TOKEN="$ADMIN_TOKEN" \
    PAYRAIL__PSP__SANDBOX_URL="http://127.0.0.1:$SANDBOX_PORT" \
    PAYRAIL__PSP__WEBHOOK_SECRET="$WEBHOOK_SECRET" \
    RUST_LOG="$NODE_RUST_LOG,librdkafka=warn,rdkafka=warn" \
    "$BIN" --config "$CONFIG" node >"$2/node.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 200); do
    kill -0 "$node_pid" 2>/dev/null || { log "node exited; see $2/node.log"; exit 1; }
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return 0
    sleep 0.3
  done
  log "node not ready; see $2/node.log"
  exit 1
}

# CPU ticks of the broker, the node and every postgres process, and of the whole machine.
cpu_snapshot() { # file
  local broker_pid
  broker_pid="$(ss -ltnpH "sport = :$PAYRAIL_BROKER_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true)"
  python3 - "$broker_pid" "$node_pid" >"$1" <<'PY'
import json, os, sys
def ticks(pid, children=False):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        own = int(fields[11]) + int(fields[12])  # utime + stime
        # cutime + cstime: children that exited (PostgreSQL backends that closed, counted
        # by the postmaster that waited for them), so a closed connection's CPU is kept.
        return own + (int(fields[13]) + int(fields[14]) if children else 0)
    except (OSError, ValueError, IndexError):
        return 0
postgres = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() == "postgres":
                postgres += ticks(pid, children=True)
    except OSError:
        pass
with open("/proc/stat") as f:
    cpu = [int(v) for v in f.readline().split()[1:]]
busy = sum(cpu) - cpu[3] - cpu[4]  # minus idle and iowait
print(json.dumps({"broker": ticks(sys.argv[1]) if sys.argv[1] else 0,
                  "node": ticks(sys.argv[2]), "postgres": postgres, "machine": busy,
                  "hz": os.sysconf("SC_CLK_TCK")}))
PY
}

journal() { # dir connections run
  log "c=$2 run $3: bench journal"
  cpu_snapshot "$1/journal-c$2-r$3.cpu0"
  "$BIN" --config "$CONFIG" bench journal --connections "$2" --duration "$DURATION_S" --warmup "$WARMUP_S" \
    --merchants "$MERCHANTS" --json --no-progress >"$1/journal-c$2-r$3.json" ||
    log "c=$2 run $3: bench journal failed"
  cpu_snapshot "$1/journal-c$2-r$3.cpu1"
}
loadtest() { # dir connections run scenarios...
  local dir="$1" c="$2" run="$3"
  shift 3
  for scenario in "$@"; do
    log "c=$c run $run: loadtest $scenario"
    cpu_snapshot "$dir/$scenario-c$c-r$run.cpu0"
    # shellcheck disable=SC2086 # LOADTEST_FLAGS holds several flags on purpose
    "$BIN" --config "$CONFIG" loadtest --target "http://127.0.0.1:$PORT" --admin-token "$ADMIN_TOKEN" \
      --scenario "$scenario" --connections "$c" --duration "$DURATION_S" --warmup "$WARMUP_S" \
      --merchants "$MERCHANTS" ${LOADTEST_FLAGS:-} --json --no-progress \
      >"$dir/$scenario-c$c-r$run.json" || log "c=$c run $run: loadtest $scenario failed"
    cpu_snapshot "$dir/$scenario-c$c-r$run.cpu1"
  done
}

for profile in $PROFILES; do
  dir="$OUT/$profile"
  mkdir -p "$dir"
  scenarios="$SCENARIOS"
  # The write path alone: the creates (native, and the Stripe-compatible one if asked for).
  if [ "$profile" = nopools ]; then
    scenarios="create"
    case " $SCENARIOS " in *" stripe-create "*) scenarios="$scenarios stripe-create" ;; esac
    case " $SCENARIOS " in *" read "*) scenarios="$scenarios read" ;; esac
  fi
  start_broker "$profile"
  case " $scenarios " in *" lifecycle "* | *" mixed "*) start_sandbox "$dir" ;; esac
  start_node "$profile" "$dir"
  for c in $CONNECTIONS; do
    for run in $(seq 1 "$RUNS"); do
      if [ "${ORDER:-journal-first}" = create-first ]; then
        # shellcheck disable=SC2086
        loadtest "$dir" "$c" "$run" $scenarios; journal "$dir" "$c" "$run"
      else
        # shellcheck disable=SC2086
        journal "$dir" "$c" "$run"; loadtest "$dir" "$c" "$run" $scenarios
      fi
    done
  done
  stop_node
  stop_private_broker
done

BASELINE="${BASELINE:-$ROOT/scripts/bench_baseline.json}"
summary=(python3 "$ROOT/scripts/bench_summary.py" "$OUT")
[ -n "${CHECK:-}" ] && summary+=(--check)
[ -n "${RECORD:-}" ] && summary+=(--record "$BASELINE" "$RECORD")
[ -n "${GATE:-}" ] && summary+=(--gate "$BASELINE" "$GATE")
"${summary[@]}"
