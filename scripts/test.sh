#!/usr/bin/env bash
# Runs every test: unit, property and integration tests against the real broker (tansu) and
# the real PostgreSQL. Installs/starts what is missing; stops only what it started.
source "$(dirname "$0")/lib.sh"
cd "$PAYRAIL_ROOT"

ensure_postgres
ensure_broker
started_broker=0
[ -f "$PAYRAIL_STATE/broker.pid" ] && started_broker=1
trap '[ "$started_broker" = 1 ] && stop_broker; true' EXIT

# The notification tests run a real SMTP server (tests/support/smtp_sink.py, aiosmtpd).
# pip first; on a Debian system Python (PEP 668 refuses pip) the python3-aiosmtpd package.
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  log "installing aiosmtpd for the notification e-mail test"
  python3 -m pip install --quiet aiosmtpd 2>/dev/null ||
    { command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq python3-aiosmtpd >/dev/null; } ||
    log "could not install aiosmtpd; the e-mail test will fail (it is not skipped)"
fi

# The API fuzz test (tests/fuzz_api.rs) runs schemathesis (PyPI) against a real node, pinned
# so a new release cannot change the cases under a green commit.
SCHEMATHESIS_VERSION=4.32.5
if [ "$(python3 -c 'import schemathesis; print(schemathesis.__version__)' 2>/dev/null)" != "$SCHEMATHESIS_VERSION" ]; then
  log "installing schemathesis $SCHEMATHESIS_VERSION for the API fuzz test"
  python3 -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION" 2>/dev/null ||
    log "could not install schemathesis; the fuzz test will fail (it is not skipped)"
fi

# The Stripe SDK tests (tests/stripe_sdk.rs) run the official SDKs, pinned, unmodified:
# `stripe` from PyPI and `stripe` from npm (installed under .payrail/stripe-node, where the
# test looks; Node.js 20 from Debian). A missing SDK fails those tests (not skipped).
STRIPE_PY_VERSION=12.5.1
STRIPE_NODE_VERSION=18.5.0
if [ "$(python3 -c 'import stripe; print(stripe.VERSION)' 2>/dev/null)" != "$STRIPE_PY_VERSION" ]; then
  log "installing stripe $STRIPE_PY_VERSION (PyPI) for the Stripe SDK test"
  python3 -m pip install --quiet "stripe==$STRIPE_PY_VERSION" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "stripe==$STRIPE_PY_VERSION" 2>/dev/null ||
    log "could not install stripe (PyPI); the Stripe SDK test will fail (it is not skipped)"
fi
command -v node >/dev/null ||
  { log "installing nodejs for the Stripe SDK test"; apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; } ||
  log "could not install Node.js; the Stripe SDK test will fail (it is not skipped)"
STRIPE_NODE_DIR="$PAYRAIL_ROOT/.payrail/stripe-node"
if [ "$(node -p "require('$STRIPE_NODE_DIR/node_modules/stripe/package.json').version" 2>/dev/null)" != "$STRIPE_NODE_VERSION" ]; then
  log "installing stripe $STRIPE_NODE_VERSION (npm) into $STRIPE_NODE_DIR"
  mkdir -p "$STRIPE_NODE_DIR"
  npm install --silent --no-audit --no-fund --prefix "$STRIPE_NODE_DIR" "stripe@$STRIPE_NODE_VERSION" ||
    log "could not install stripe (npm); the Stripe SDK test will fail (it is not skipped)"
fi
export PAYRAIL_STRIPE_NODE_DIR="$STRIPE_NODE_DIR"

# The dashboard test (tests/dashboard.rs) runs the page in headless Chromium.
command -v chromium >/dev/null ||
  { log "installing chromium for the dashboard test"; apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } ||
  log "could not install chromium; the dashboard test will fail (it is not skipped)"

# Databases left by earlier integration-test runs (each test makes its own). Without FORCE,
# so databases of test runs still going (e.g. another checkout's) are left alone.
if command -v psql >/dev/null; then
  psql "$PAYRAIL_DATABASE_URL" -qtAX -c "SELECT datname FROM pg_database WHERE datname LIKE 'payrail_it_%' OR datname LIKE 'payrail_kj_%'" |
    while read -r db; do
      [ -n "$db" ] && psql "$PAYRAIL_DATABASE_URL" -qtAX -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
    done
fi

export PAYRAIL_TEST_BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT"
export PAYRAIL_TEST_DATABASE_URL="$PAYRAIL_DATABASE_URL"
export PAYRAIL_TANSU_BIN="$(command -v tansu)"
# --no-fail-fast: a failing test binary does not hide the results of the ones after it.
# The output is kept, and the failures' panics are printed again at the end (CI shows the end).
TEST_LOG="$PAYRAIL_STATE/test-output.log"
if ! cargo test --workspace --all-targets --no-fail-fast -- --test-threads="${PAYRAIL_TEST_THREADS:-4}" 2>&1 |
  tee "$TEST_LOG"; then
  summarize_failures "$TEST_LOG"
  exit 1
fi

# Keeps scripts/benchmarks.sh runnable: every profile and scenario, 2 s each, with the debug
# binary, on a private broker it starts and stops; fails unless every run served requests.
log "benchmark check (scripts/benchmarks.sh, short)"
env -u PAYRAIL_BROKER_PORT -u PAYRAIL_STATE CHECK=1 PAYRAIL_BIN="${CARGO_TARGET_DIR:-target}/debug/payrail" \
  PROFILES="pools pools-own-fetch nopools" SCENARIOS="create lifecycle mixed stripe-create" CONNECTIONS=4 RUNS=1 DURATION_S=2 WARMUP_S=1 \
  MERCHANTS=10 OUT="$PAYRAIL_ROOT/.payrail/bench-check" bash scripts/benchmarks.sh

# Memory by count (issue 25): live payment actors stay within actors.max_live_payments and
# the node's RSS stays flat once they are there (a small size, the debug binary).
log "memory bound check (scripts/memory_bound_check.sh, debug binary)"
PAYRAIL_BIN="${CARGO_TARGET_DIR:-target}/debug/payrail" bash scripts/memory_bound_check.sh

# The regression gate (issue 25): the write path's and the pools' ratios to the raw journal
# must stay within 10 % of those recorded for this machine (scripts/bench_baseline.json).
log "benchmark regression gate (scripts/bench_gate.sh ci-debug)"
env -u PAYRAIL_BROKER_PORT -u PAYRAIL_STATE bash scripts/bench_gate.sh ci-debug
