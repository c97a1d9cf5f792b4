#!/usr/bin/env bash
# P7: start-up to ready and RSS after start with many live tasks and many events. Seeds a
# data directory through the real store (crates/mandate-server/examples/seed_store.rs),
# starts the release `mandate serve` on it, times start to the first 200 on /readyz, and
# reads VmRSS once ready. Runs twice, with few and with many events, so "RSS independent
# of the number of events" is a ratio measured in the same run. Run from the repository root:
#   bash scripts/bench-startup.sh [live-tasks] [events] [agents]
set -euo pipefail
cd "$(dirname "$0")/.."

tasks="${1:-10000}"
events="${2:-1000000}"
agents="${3:-1000}"
[ -x target/release/mandate ] || cargo build --release --quiet -p mandate  # never rebuilds an existing binary
[ -x target/release/examples/seed_store ] || cargo build --release --quiet -p mandate-server --example seed_store
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
export MANDATE_ADMIN_TOKEN="bench-admin-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"

measure() { # data-dir label
  local p; p="$(port)"
  local t0; t0="$(date +%s%N)"
  MANDATE_LOG=warn ./target/release/mandate serve --listen "127.0.0.1:$p" --data-dir "$1" \
    --policies examples/policies/demo --no-watch >"$work/$2.log" 2>&1 &
  local pid=$!
  until curl -fsS "http://127.0.0.1:$p/readyz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "server died:"; cat "$work/$2.log"; exit 1; }
    sleep 0.01
  done
  local t1; t1="$(date +%s%N)"
  local rss; rss="$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")"
  sleep 3   # the background chain walk runs after ready; RSS once it is done too
  local rss2; rss2="$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf '%-28s start-up to ready %6d ms   RSS at ready %6d KiB   RSS 3 s later %6d KiB\n' \
    "$2" $(( (t1 - t0) / 1000000 )) "$rss" "$rss2"
}

few=$(( tasks * 2 ))
./target/release/examples/seed_store "$work/few" "$agents" "$tasks" "$few" >/dev/null
./target/release/examples/seed_store "$work/many" "$agents" "$tasks" "$events" >/dev/null
echo "$tasks live tasks, $agents agents:"
measure "$work/few" "$few events"
measure "$work/many" "$events events"
