#!/usr/bin/env bash
# P2: decision API throughput and latency over HTTP keep-alive, AuthZEN `POST
# /access/v1/evaluation` against a real `mandate serve` (every decision durably audited,
# group commit), beside a bare hyper server answering a constant, in the same run, with
# the same load tool and settings. Installs wrk (Debian) when missing. Run from the
# repository root:
#   bash scripts/bench-authzen.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-10}"
conns="${2:-32}"
if ! command -v wrk >/dev/null; then
  if command -v apt-get >/dev/null; then
    (apt-get install -y -q wrk || sudo apt-get install -y -q wrk) >/dev/null
  fi
fi
command -v wrk >/dev/null || { echo "wrk is needed (Debian package wrk)"; exit 1; }

[ -x target/release/mandate ] || cargo build --release --quiet -p mandate  # never rebuilds an existing binary
[ -x target/release/examples/constant_server ] || cargo build --release --quiet -p mandate-server --example constant_server
work="$(mktemp -d)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
mport="$(port)"; cport="$(port)"
export MANDATE_ADMIN_TOKEN="bench-admin-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export MANDATE_URL="http://127.0.0.1:$mport"
MANDATE_LOG=warn ./target/release/mandate serve --listen "127.0.0.1:$mport" --data-dir "$work/data" \
  --policies examples/policies/demo --no-watch \
  --agent-decisions-per-sec 100000000 --task-decisions-per-sec 100000000 >"$work/server.log" 2>&1 &
mandate_pid=$!
./target/release/examples/constant_server "127.0.0.1:$cport" 2>/dev/null &
constant_pid=$!
trap 'kill $mandate_pid $constant_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for p in "$mport" "$cport"; do
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $p), 1)" 2>/dev/null && break
    sleep 0.1
  done
done

m=./target/release/mandate
join="$($m agent register bench-bot --owner bench@example.com --tier 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["join_token"])')"
identity="$($m agent attest bench-bot --join-token "$join" | python3 -c 'import json,sys; print(json.load(sys.stdin)["identity_token"])')"
token="$($m task start --identity-token "$identity" --purpose "benchmark" --tool tickets.search \
  --action read --data-domain support --ttl 1800 | python3 -c 'import json,sys; print(json.load(sys.stdin)["task_token"])')"

body="$(python3 - "$token" <<'PY'
import json, sys
print(json.dumps({
    "subject": {"type": "agent", "properties": {"token": sys.argv[1]}},
    "action": {"name": "read"},
    "resource": {"type": "tool", "id": "tickets.search", "properties": {"resource": "queue/open", "data_domain": "support"}},
    "context": {"arguments": {"status": "open", "limit": 20}},
}))
PY
)"
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[$body]]
LUA

answer="$(curl -s -X POST -H 'Content-Type: application/json' --data "$body" "$MANDATE_URL/access/v1/evaluation")"
echo "$answer" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["decision"] is True, d; print("sanity: mandate allows the benchmarked call")'

run() {
  echo "== $1"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$work/post.lua" "$2" | grep -E "Requests/sec|Latency |50%|90%|99%|requests in|Non-2xx"
}
run "bare hyper constant answer" "http://127.0.0.1:$cport/access/v1/evaluation"
run "mandate AuthZEN evaluation (durably audited)" "$MANDATE_URL/access/v1/evaluation"
events="$($m audit verify --data-dir "$work/data" 2>&1 | tail -1)"
echo "audit after the run: $events"
