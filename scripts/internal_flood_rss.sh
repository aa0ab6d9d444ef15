#!/usr/bin/env bash
# Usage: scripts/internal_flood_rss.sh [CONNECTIONS] [MIB_EACH] — issue 23's measurement of
# `/internal/v1/events` before authentication: starts a node (PAYRAIL_BIN, default the
# release binary) on loopback with its own database, on the broker already running
# (scripts/broker.sh start), then opens CONNECTIONS (default 20) connections that each
# announce and push MIB_EACH (default 8) MiB of body to /internal/v1/events without the
# cluster secret (half send none, half a wrong one). Samples the node's RSS (VmRSS) every
# 20 ms from before the first connection until every push ended (at most 60 s), prints the
# baseline, the peak and the growth, and exits 1 when the growth reaches LIMIT_MIB (64).
# Stops the node it started (by PID) and drops its database. Env: PORT (18180).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
count="${1:-20}"
mib="${2:-8}"
BIN="${PAYRAIL_BIN:-${CARGO_TARGET_DIR:-$PAYRAIL_ROOT/target}/release/payrail}"
PORT="${PORT:-18180}"
LIMIT_MIB="${LIMIT_MIB:-64}"
[ -x "$BIN" ] || { log "no binary at $BIN; run cargo build --release --bin payrail"; exit 1; }
out="$PAYRAIL_STATE/internal-flood-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
trap stop_scratch_node EXIT
trap 'exit 130' INT TERM
start_scratch_node "$BIN" "$PORT" "$out/node.log"
log "node pid $SCRATCH_NODE_PID ready on 127.0.0.1:$PORT; $count connections x $mib MiB"
python3 - "$PORT" "$SCRATCH_NODE_PID" "$count" "$mib" "$LIMIT_MIB" <<'PY'
import socket, sys, threading, time

port, pid, count, mib, limit = (int(a) for a in sys.argv[1:])
size = mib * 1024 * 1024
chunk = b"x" * 65536

def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

results = [None] * count

def push(i):
    sent, status = 0, "no answer"
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        secret = b"X-Payrail-Cluster-Secret: not-the-secret\r\n" if i % 2 else b""
        s.sendall(b"POST /internal/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\n" + secret +
                  f"Content-Length: {size}\r\n\r\n".encode())
        while sent < size:
            sent += s.send(chunk[: min(len(chunk), size - sent)])
    except OSError as e:
        status = f"send stopped: {e.__class__.__name__}"
    try:
        s.settimeout(5)
        head = s.recv(256).split(b"\r\n", 1)[0].decode(errors="replace")
        status = head or status
        s.close()
    except OSError:
        pass
    results[i] = (sent, status)

base = [rss_kib() for _ in range(5)]
baseline = max(base)
threads = [threading.Thread(target=push, args=(i,), daemon=True) for i in range(count)]
start = time.monotonic()
for t in threads:
    t.start()
peak = baseline
while any(t.is_alive() for t in threads) and time.monotonic() - start < 60:
    peak = max(peak, rss_kib())
    time.sleep(0.02)
for _ in range(25):  # and 0.5 s after the last push
    peak = max(peak, rss_kib())
    time.sleep(0.02)
took = time.monotonic() - start
statuses = {}
for r in results:
    key = r[1] if r else "unfinished"
    statuses[key] = statuses.get(key, 0) + 1
sent = sum(r[0] for r in results if r)
growth = (peak - baseline) / 1024
print(f"connections={count} body_each_mib={mib} pushed_total_mib={sent / 1048576:.1f} took_s={took:.2f}")
print(f"answers: {statuses}")
print(f"rss_mib: baseline={baseline / 1024:.1f} peak={peak / 1024:.1f} growth={growth:.1f} (limit {limit})")
sys.exit(0 if growth < limit else 1)
PY
