#!/usr/bin/env bash
# Usage: scripts/bench_gate.sh [release|ci-debug] [--record] — the benchmark regression gate.
# Runs scripts/benchmarks.sh with the settings of the section (below) and fails (exit 1) when
# a ratio to the raw journal (creates/s and lifecycle requests/s ÷ raw journal records/s, same
# run) has fallen more than the baseline's tolerance (10 %) below the one recorded in
# scripts/bench_baseline.json for that section; --record writes this run's ratios there
# instead (after a change that is meant to move them, with the measurement in BENCHMARKS.md).
#   release   the release binary, write path and all pools at 100 connections, 3 runs of 10 s
#             (~5 min): run it before landing a change to the write path or the pools.
#   ci-debug  the debug binary CI builds anyway, 16 connections, 3 runs of 4 s (~2 min): run
#             by scripts/test.sh, so a regression fails CI the day it lands.
# PAYRAIL_BIN (and CONFIG, for a binary of another commit) gate another binary than the
# section's own.
# Ratios are of one machine: a section is recorded on the machine that checks it (CI runs on
# the developers' machine). Other settings as in scripts/benchmarks.sh (OUT, ports).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
section="${1:-release}"
mode=GATE
[ "${2:-}" = --record ] && mode=RECORD
case "$section" in
  release)
    settings=(PAYRAIL_BIN="${PAYRAIL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/payrail}" PROFILES="nopools pools"
      SCENARIOS="create lifecycle" CONNECTIONS=100 RUNS=3 DURATION_S=10 WARMUP_S=3 MERCHANTS=100) ;;
  ci-debug)
    settings=(PAYRAIL_BIN="${PAYRAIL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/payrail}" PROFILES="nopools pools"
      SCENARIOS="create lifecycle" CONNECTIONS=16 RUNS=3 DURATION_S=4 WARMUP_S=1 MERCHANTS=10) ;;
  *) echo "usage: $0 [release|ci-debug] [--record]" >&2; exit 2 ;;
esac
exec env "${settings[@]}" "$mode=$section" OUT="${OUT:-$ROOT/.payrail/bench-gate-$section-$(date +%Y%m%d-%H%M%S)}" \
  bash "$ROOT/scripts/benchmarks.sh"
