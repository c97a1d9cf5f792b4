#!/usr/bin/env bash
# Instructions per call, counted by callgrind (stable whatever else the machine runs): the
# release `mandate serve` runs under valgrind; after a warm-up its counters are zeroed,
# N calls are made by a client outside valgrind over one keep-alive connection, and the
# dumped total (every server thread: HTTP, decision, audit writer, SQLite) is divided by N.
# Beside it, nginx `return 200` counted the same way when nginx is installed. Installs
# valgrind (Debian) when missing; uses the release binary if there is one. Run from the
# repository root:
#   bash scripts/callgrind-calls.sh [calls]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000}"
if ! command -v valgrind >/dev/null && command -v apt-get >/dev/null; then
  (apt-get install -y -q valgrind || sudo apt-get install -y -q valgrind) >/dev/null
fi
[ -x target/release/mandate ] || cargo build --release --quiet -p mandate
m="$PWD/target/release/mandate"
work="$(mktemp -d)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
mport="$(port)"
export MANDATE_ADMIN_TOKEN="bench-admin-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export MANDATE_URL="http://127.0.0.1:$mport"
MANDATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/mandate.cg" \
  "$m" serve --listen "127.0.0.1:$mport" --data-dir "$work/data" \
  --policies examples/policies/demo --no-watch \
  --agent-decisions-per-sec 100000000 --task-decisions-per-sec 100000000 >"$work/server.log" 2>&1 &
vpid=$!
trap 'kill $vpid 2>/dev/null || true; [ -n "${npid:-}" ] && kill $npid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do curl -fsS "$MANDATE_URL/readyz" >/dev/null 2>&1 && break; sleep 0.2; done

join="$($m agent register cg-bot --owner bench@example.com --tier 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["join_token"])')"
identity="$($m agent attest cg-bot --join-token "$join" | python3 -c 'import json,sys; print(json.load(sys.stdin)["identity_token"])')"
token="$($m task start --identity-token "$identity" --purpose "benchmark" --tool tickets.search \
  --action read --data-domain support --ttl 1800 | python3 -c 'import json,sys; print(json.load(sys.stdin)["task_token"])')"

# calls KIND COUNT: COUNT requests of KIND on one keep-alive connection, each checked.
calls() {
  python3 - "$mport" "$1" "$2" "$token" "$identity" <<'PY'
import http.client, json, sys
port, kind, count, token, identity = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
for i in range(count):
    if kind == "decide":
        body, path, bearer, want = {"tool": "tickets.search", "action": "read", "resource": "queue/open", "arguments": {"n": i}}, "/v1/decide", token, 200
    elif kind == "authzen":
        body, path, bearer, want = {"subject": {"type": "agent", "properties": {"token": token}}, "action": {"name": "read"},
            "resource": {"type": "tool", "id": "tickets.search", "properties": {"resource": "queue/open", "data_domain": "support"}}}, "/access/v1/evaluation", None, 200
    else:
        body, path, bearer, want = {"purpose": "benchmark", "scope": {"tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"]}, "ttl_secs": 600}, "/v1/tasks", identity, 201
    h = {"Content-Type": "application/json"}
    if bearer:
        h["Authorization"] = "Bearer " + bearer
    c.request("POST", path, json.dumps(body), h)
    r = c.getresponse(); data = r.read()
    assert r.status == want, (r.status, data)
PY
}

# measure LABEL KIND COUNT: zero the counters, make the calls, dump, print Ir per call.
measure() {
  calls "$2" 50
  callgrind_control -z "$vpid" >/dev/null 2>&1
  calls "$2" "$3"
  callgrind_control -d "$vpid" >/dev/null 2>&1
  sleep 1
  local total
  total="$(cat "$work"/mandate.cg.* 2>/dev/null | awk '/^(summary|totals):/ {s=$2} END {print s}')"
  [ -n "${KEEP:-}" ] && cp "$work"/mandate.cg.* "$KEEP/" 2>/dev/null; rm -f "$work"/mandate.cg.*
  python3 -c "print(f'{\"$1\":<44} {int(\"$total\") / $3:>12,.0f} instructions per call ({$3} calls)')"
}
echo "== instructions per call under callgrind (all server threads, durable audit included)"
measure "mandate POST /v1/decide" decide "$n"
measure "mandate POST /access/v1/evaluation" authzen "$n"
measure "mandate POST /v1/tasks (task start)" start "$((n / 5))"

if command -v nginx >/dev/null; then
  nport="$(port)"
  cat >"$work/nginx.conf" <<NGX
daemon off; master_process off; worker_processes 1; error_log $work/nginx.err; pid $work/nginx.pid;
events { worker_connections 64; }
http { access_log off; server { listen 127.0.0.1:$nport; location / { return 200 "ok"; } } }
NGX
  valgrind --tool=callgrind --callgrind-out-file="$work/nginx.cg" nginx -c "$work/nginx.conf" >/dev/null 2>&1 &
  npid=$!
  for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$nport/" >/dev/null 2>&1 && break; sleep 0.2; done
  python3 - "$nport" 50 <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    c.request("POST", "/", "{}", {"Content-Type": "application/json"}); c.getresponse().read()
PY
  callgrind_control -z "$npid" >/dev/null 2>&1
  python3 - "$nport" "$n" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    c.request("POST", "/", "{}", {"Content-Type": "application/json"}); c.getresponse().read()
PY
  callgrind_control -d "$npid" >/dev/null 2>&1
  sleep 1
  total="$(cat "$work"/nginx.cg* 2>/dev/null | awk '/^(summary|totals):/ {s=$2} END {print s}')"
  python3 -c "print(f'{\"nginx return 200\":<44} {int(\"$total\") / $n:>12,.0f} instructions per call ({$n} calls)')"
else
  echo "(nginx not installed: apt-get install nginx for the baseline row)"
fi
