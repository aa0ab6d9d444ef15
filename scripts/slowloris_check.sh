#!/usr/bin/env bash
# Usage: scripts/slowloris_check.sh HOST:PORT [CONNECTIONS] [LIMIT_S] — issue 23's slow-client
# check against a running node: opens CONNECTIONS (default 200) TCP connections that each
# send part of a request's headers and then nothing, waits up to LIMIT_S (default 30) for
# the server to close each (read returns 0 or fails), and prints the time from open to
# close (max, p50, p99) and how many were still open. Loopback or a node you run; bounded.
set -euo pipefail
target="${1:?HOST:PORT}"
count="${2:-200}"
limit="${3:-30}"
exec python3 - "$target" "$count" "$limit" <<'PY'
import selectors, socket, sys, time

host, port = sys.argv[1].rsplit(":", 1)
count, limit = int(sys.argv[2]), float(sys.argv[3])
sel = selectors.DefaultSelector()
opened = {}
for _ in range(count):
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: " + host.encode() + b"\r\nX-Slow: ")
    s.setblocking(False)
    opened[s] = time.monotonic()
    sel.register(s, selectors.EVENT_READ)
took = []
deadline = time.monotonic() + limit
while opened and time.monotonic() < deadline:
    for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if data:
            continue  # e.g. an error reply; wait for the close
        took.append(time.monotonic() - opened.pop(s))
        sel.unregister(s)
        s.close()
for s in opened:
    s.close()
took.sort()
def pct(p):
    return took[min(len(took) - 1, int(p * len(took)))] if took else float("nan")
print(f"connections={count} closed={len(took)} still_open_after_{limit:g}s={len(opened)}")
if took:
    print(f"open->close s: min={took[0]:.3f} p50={pct(0.5):.3f} p99={pct(0.99):.3f} max={took[-1]:.3f}")
sys.exit(1 if opened else 0)
PY
