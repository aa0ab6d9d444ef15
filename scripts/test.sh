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

# Databases left by earlier integration-test runs (each test makes its own).
if command -v psql >/dev/null; then
  psql "$PAYRAIL_DATABASE_URL" -qtAX -c "SELECT datname FROM pg_database WHERE datname LIKE 'payrail_it_%'" |
    while read -r db; do
      [ -n "$db" ] && psql "$PAYRAIL_DATABASE_URL" -qtAX -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
    done
fi

export PAYRAIL_TEST_BROKERS="127.0.0.1:$PAYRAIL_BROKER_PORT"
export PAYRAIL_TEST_DATABASE_URL="$PAYRAIL_DATABASE_URL"
export PAYRAIL_TANSU_BIN="$(command -v tansu)"
cargo test --workspace --all-targets -- --test-threads="${PAYRAIL_TEST_THREADS:-4}"
