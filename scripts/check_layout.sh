#!/usr/bin/env bash
# The crates' dependencies point one way (README, "Layout"; issue 24): the pure domain has
# no I/O, the pools do not know the actors or the fallback, the fallback knows neither the
# domain nor the actors, and the actors know neither the pools nor HTTP;
# the Stripe-compatible API's pure part (stripe_compat/, issue 26) has no I/O either.
# Fails naming the crate and the dependency that should not be there.
set -euo pipefail
cd "$(dirname "$0")/.."
deps() { cargo tree -p "$1" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u; }
fail=0
forbid() {
  local crate=$1; shift
  local have
  have=$(deps "$crate")
  for dep in "$@"; do
    if grep -qx "$dep" <<<"$have"; then
      echo "[layout] $crate depends on $dep, which it must not know" >&2
      fail=1
    fi
  done
}
forbid payrail-payment tokio sqlx rdkafka warp hyper kafka_journal payrail-actors payrail-pools payrail-stripe-compat
forbid payrail-pools payrail-actors payrail-fallback payrail-http payrail-cluster warp
forbid payrail-fallback payrail-payment payrail-actors payrail-pools payrail-http payrail-cluster warp
forbid payrail-actors payrail-pools payrail-http warp
forbid kafka_journal payrail-payment payrail-actors payrail-pools
forbid payrail-supervisor kafka_journal payrail-payment payrail-actors payrail-pools payrail-fallback
forbid payrail-loadtest payrail-actors payrail-pools payrail-fallback payrail-http
forbid payrail-stripe-compat tokio sqlx rdkafka warp hyper kafka_journal payrail-actors payrail-pools payrail-http
[ "$fail" = 0 ] && echo "[layout] dependencies point one way"
# No import circle between a crate's files, and no source file past ~500 lines (issue 24).
python3 scripts/check_imports.py || fail=1
long=$(find . -path ./target -prune -o -path ./.payrail -prune -o \
  -name '*.rs' -print | xargs wc -l | awk '$2 != "total" && $1 > 520 {print $2 " (" $1 " lines)"}')
if [ -n "$long" ]; then
  echo "[layout] source files past ~500 lines (split them by concern): $long" >&2
  fail=1
fi
exit "$fail"
