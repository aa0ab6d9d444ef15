#!/usr/bin/env bash
# Usage: scripts/broker.sh start|stop — the development broker (tansu) on loopback.
source "$(dirname "$0")/lib.sh"
case "${1:-start}" in
  start) ensure_broker ;;
  stop) stop_broker ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
