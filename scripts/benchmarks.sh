#!/usr/bin/env bash
# Usage: scripts/benchmarks.sh — the measurements of BENCHMARKS.md, one after the other in one
# session: for each concurrency in $CONNECTIONS (default "16 100"), $RUNS times (default 2):
# the raw journal reference (`payrail bench journal`), then each scenario of $SCENARIOS
# (default "create"; also "lifecycle", "mixed") against a node started from the release
# binary (`payrail loadtest --scenario …`). For lifecycle and mixed a PSP sandbox is started
# too (`payrail psp-sandbox` on 127.0.0.1:$SANDBOX_PORT, default 18091, sending the node its
# signed webhooks). Results (one JSON object per run) go to $OUT (default
# .payrail/bench-<time>/), a summary to stdout (per kind for lifecycle and mixed).
# Env: PAYRAIL_BIN (default target/release/payrail, or $CARGO_TARGET_DIR/release/payrail),
# DURATION_S (10), WARMUP_S (3), MERCHANTS (100), NODE_RUST_LOG (node log filter, default
# "info", the shipped default), LOADTEST_FLAGS (extra flags for payrail loadtest),
# PAYRAIL_BROKER_PORT / PAYRAIL_STATE (use or start a broker of your own, e.g. 19092, so a
# broker crash under load hurts nobody else), ORDER (journal-first, or create-first: the
# scenarios first), PORT (node, 18080), SCENARIOS, SANDBOX_PORT (see above).
source "$(dirname "$0")/lib.sh"
cd "$PAYRAIL_ROOT"

BIN="${PAYRAIL_BIN:-${CARGO_TARGET_DIR:-target}/release/payrail}"
CONNECTIONS="${CONNECTIONS:-16 100}"
RUNS="${RUNS:-2}"
DURATION_S="${DURATION_S:-10}"
WARMUP_S="${WARMUP_S:-3}"
MERCHANTS="${MERCHANTS:-100}"
NODE_RUST_LOG="${NODE_RUST_LOG:-info}"
PORT="${PORT:-18080}"
SCENARIOS="${SCENARIOS:-create}"
SANDBOX_PORT="${SANDBOX_PORT:-18091}"
stamp="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-$PAYRAIL_STATE/bench-$stamp}"
ADMIN_TOKEN="bench-admin-token-0123456789"
WEBHOOK_SECRET="whsec_bench_0123456789abcdef"
need_sandbox=0
for scenario in $SCENARIOS; do
  case "$scenario" in
    create) ;;
    lifecycle | mixed) need_sandbox=1 ;;
    *) log "unknown scenario $scenario in SCENARIOS (create, lifecycle, mixed)"; exit 1 ;;
  esac
done

[ -x "$BIN" ] || { log "no release binary at $BIN; run cargo build --release"; exit 1; }
ensure_postgres
ensure_broker
mkdir -p "$OUT"
export PAYRAIL__JOURNAL__BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT"

db="payrail_bench_${stamp//-/_}"
psql "$PAYRAIL_DATABASE_URL" -qtAX -c "CREATE DATABASE \"$db\"" >/dev/null
db_url="${PAYRAIL_DATABASE_URL%/*}/$db"

# The ports must be free: a node or sandbox already there would answer in place of ours.
for port in "$PORT" $([ "$need_sandbox" = 1 ] && echo "$SANDBOX_PORT"); do
  if port_open "$port"; then
    log "127.0.0.1:$port is already in use; set PORT / SANDBOX_PORT to free ports"
    exit 1
  fi
done

# Stop only what this script started, by PID.
node_pid=""
sandbox_pid=""
cleanup() {
  for pid in $node_pid $sandbox_pid; do kill "$pid" 2>/dev/null || true; done
  for pid in $node_pid $sandbox_pid; do wait "$pid" 2>/dev/null || true; done
  return 0
}
trap cleanup EXIT

if [ "$need_sandbox" = 1 ]; then
  log "starting the PSP sandbox on 127.0.0.1:$SANDBOX_PORT"
  "$BIN" psp-sandbox --bind "127.0.0.1:$SANDBOX_PORT" \
    --webhook-url "http://127.0.0.1:$PORT/webhooks/psp/sandbox" --webhook-secret "$WEBHOOK_SECRET" \
    >"$OUT/sandbox.log" 2>&1 &
  sandbox_pid=$!
  echo "$sandbox_pid" >"$OUT/sandbox.pid"
  for _ in $(seq 1 100); do
    port_open "$SANDBOX_PORT" && break
    kill -0 "$sandbox_pid" 2>/dev/null || { log "sandbox exited; see $OUT/sandbox.log"; exit 1; }
    sleep 0.1
  done
  export PAYRAIL__PSP__SANDBOX_URL="http://127.0.0.1:$SANDBOX_PORT"
  export PAYRAIL__PSP__WEBHOOK_SECRET="$WEBHOOK_SECRET"
fi

log "starting the node (release, database $db, namespace benchnode-$stamp.)"
PAYRAIL__JOURNAL__NAMESPACE="benchnode-$stamp." \
PAYRAIL__DATABASE__URL="$db_url" \
PAYRAIL__HTTP__BIND="127.0.0.1:$PORT" \
PAYRAIL__HTTP__ADMIN_TOKEN="$ADMIN_TOKEN" \
RUST_LOG="$NODE_RUST_LOG,librdkafka=warn,rdkafka=warn" \
  "$BIN" node >"$OUT/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 1 100); do
  kill -0 "$node_pid" 2>/dev/null || { log "node exited; see $OUT/node.log"; exit 1; }
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.3
done
kill -0 "$node_pid" 2>/dev/null || { log "node exited; see $OUT/node.log"; exit 1; }
echo "$node_pid" >"$OUT/node.pid"

# CPU accounting: CPU ticks of the broker, the node and every postgres process, and of the
# whole machine, before and after each run (so BENCHMARKS.md can say where the CPU goes
# per request). The broker is whoever listens on the broker port.
broker_pid="$(ss -ltnpH "sport = :$PAYRAIL_BROKER_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true)"
cpu_snapshot() { # file
  python3 - "$broker_pid" "$node_pid" >"$1" <<'PY'
import json, os, sys
def ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0
postgres = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() == "postgres":
                postgres += ticks(pid)
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

journal() { # connections run
  log "c=$1 run $2: bench journal"
  cpu_snapshot "$OUT/journal-c$1-r$2.cpu0"
  "$BIN" bench journal --connections "$1" --duration "$DURATION_S" --warmup "$WARMUP_S" \
    --merchants "$MERCHANTS" --json --no-progress >"$OUT/journal-c$1-r$2.json" ||
    log "c=$1 run $2: bench journal failed"
  cpu_snapshot "$OUT/journal-c$1-r$2.cpu1"
}
loadtest() { # connections run
  for scenario in $SCENARIOS; do
    log "c=$1 run $2: loadtest $scenario"
    cpu_snapshot "$OUT/$scenario-c$1-r$2.cpu0"
    "$BIN" loadtest --target "http://127.0.0.1:$PORT" --admin-token "$ADMIN_TOKEN" \
      --scenario "$scenario" --connections "$1" --duration "$DURATION_S" --warmup "$WARMUP_S" \
      --merchants "$MERCHANTS" ${LOADTEST_FLAGS:-} --json --no-progress \
      >"$OUT/$scenario-c$1-r$2.json" || log "c=$1 run $2: loadtest $scenario failed"
    cpu_snapshot "$OUT/$scenario-c$1-r$2.cpu1"
  done
}
for c in $CONNECTIONS; do
  for run in $(seq 1 "$RUNS"); do
    if [ "${ORDER:-journal-first}" = create-first ]; then
      loadtest "$c" "$run"; journal "$c" "$run"
    else
      journal "$c" "$run"; loadtest "$c" "$run"
    fi
  done
done

python3 - "$OUT" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
def load(p):
    with open(p) as f: return json.load(f)
print(f"results in {out}")
print(f"{'run':<22}{'ok/s':>10}{'errors':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}")
rows = {}
for p in sorted(glob.glob(os.path.join(out, "*-c*-r*.json"))):
    name = os.path.basename(p)[:-5]
    if os.path.getsize(p) == 0:
        print(f"{name:<22}  (no result: the command failed)")
        continue
    r = load(p)
    rows[name] = r
    def row(label, k):
        l = k["latency_us"]
        print(f"{label:<22}{k['throughput_per_s']:>10.1f}{k['errors']:>8}{l['p50']/1e3:>9.2f}{l['p90']/1e3:>9.2f}{l['p99']/1e3:>9.2f}{l['p999']/1e3:>10.2f}{l['max']/1e3:>9.2f}")
    row(name, r)
    if r.get("scenario") in ("lifecycle", "mixed"):
        for kind, k in r["kinds"].items():
            row(f"  {kind}", k)
print()
print("CPU per successful request of the whole run (warm-up, measured phase and the pools' drain):")
print(f"{'run':<22}{'broker us':>11}{'node us':>9}{'postgres us':>13}{'rest us':>9}{'machine us':>12}")
for name, r in rows.items():
    try:
        a, b = load(os.path.join(out, name + ".cpu0")), load(os.path.join(out, name + ".cpu1"))
    except (OSError, ValueError):
        continue
    ok = r["total"]["ok"]
    if ok == 0:
        continue
    us = lambda k: (b[k] - a[k]) * 1e6 / a["hz"] / ok
    rest = us("machine") - us("broker") - us("node") - us("postgres")
    print(f"{name:<22}{us('broker'):>11.0f}{us('node'):>9.0f}{us('postgres'):>13.0f}{rest:>9.0f}{us('machine'):>12.0f}")
print()
for name, r in rows.items():
    if name.startswith("create-"):
        j = rows.get("journal-" + name[len("create-"):])
        if j and j["throughput_per_s"] > 0:
            print(f"{name}: create / raw journal = {r['throughput_per_s'] / j['throughput_per_s']:.2f}")
PY
