#!/usr/bin/env bash
# What sender-constrained tokens cost per call, in instructions (callgrind: stable whatever
# else the machine runs). The release `mandate serve` runs under valgrind; one task's token
# is a bearer token, another's is bound to a key (DPoP, RFC 9449). After a warm-up the
# counters are zeroed, N `POST /v1/decide` calls are made with each (the bound one with a
# fresh proof per call, made beforehand by PyPI joserfc outside valgrind), and the dumped
# total (every server thread: HTTP, DPoP check, decision, audit writer, SQLite) is divided
# by N. Needs the identity peers (bash scripts/install-identity-peers.sh). Run from the
# repository root:
#   bash scripts/callgrind-dpop.sh [calls]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-500}"
if ! command -v valgrind >/dev/null && command -v apt-get >/dev/null; then
  (apt-get install -y -q valgrind || sudo apt-get install -y -q valgrind) >/dev/null
fi
py="$(bash scripts/install-identity-peers.sh | tail -n 1)"
[ -x target/release/mandate ] || cargo build --release --quiet -p mandate
m="$PWD/target/release/mandate"
proofs="$PWD/crates/mandate-server/tests/fixtures/dpop_proof.py"
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
trap 'kill $vpid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do curl -fsS "$MANDATE_URL/readyz" >/dev/null 2>&1 && break; sleep 0.2; done

join="$($m agent register cg-bot --owner bench@example.com --tier 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["join_token"])')"
identity="$($m agent attest cg-bot --join-token "$join" | python3 -c 'import json,sys; print(json.load(sys.stdin)["identity_token"])')"
start='{"purpose": "benchmark", "scope": {"tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"]}, "ttl_secs": 1800}'
plain="$(curl -fsS "$MANDATE_URL/v1/tasks" -H "Authorization: Bearer $identity" -H 'Content-Type: application/json' -d "$start" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["task_token"])')"
proof="$("$py" "$proofs" "$work/key.json" POST "$MANDATE_URL/v1/tasks" | python3 -c 'import json,sys; print(json.load(sys.stdin)["proof"])')"
bound="$(curl -fsS "$MANDATE_URL/v1/tasks" -H "Authorization: Bearer $identity" -H "DPoP: $proof" -H 'Content-Type: application/json' -d "$start" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["task_token"])')"

# calls SCHEME TOKEN COUNT [PROOFS_FILE]: COUNT decisions on one keep-alive connection, each checked.
calls() {
  python3 - "$mport" "$1" "$2" "$3" "${4:-}" <<'PY'
import http.client, json, sys
port, scheme, token, count, proofs = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
lines = open(proofs).read().split("\n") if proofs else []
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
for i in range(count):
    h = {"Content-Type": "application/json", "Authorization": f"{scheme} {token}"}
    if lines:
        h["DPoP"] = json.loads(lines[i])["proof"]
    body = {"tool": "tickets.search", "action": "read", "resource": "queue/open", "arguments": {"n": i}}
    c.request("POST", "/v1/decide", json.dumps(body), h)
    r = c.getresponse(); data = r.read()
    assert r.status == 200, (r.status, data)
PY
}

# measure LABEL SCHEME TOKEN: zero the counters, make N calls, dump, print Ir per call.
measure() {
  local warm="" timed=""
  if [ "$2" = DPoP ]; then
    "$py" "$proofs" "$work/key.json" POST "$MANDATE_URL/v1/decide" "$3" 50 >"$work/warm"
    "$py" "$proofs" "$work/key.json" POST "$MANDATE_URL/v1/decide" "$3" "$n" >"$work/timed"
    warm="$work/warm"; timed="$work/timed"
  fi
  calls "$2" "$3" 50 "$warm"
  callgrind_control -z "$vpid" >/dev/null 2>&1
  calls "$2" "$3" "$n" "$timed"
  callgrind_control -d "$vpid" >/dev/null 2>&1
  sleep 1
  local total
  total="$(cat "$work"/mandate.cg.* 2>/dev/null | awk '/^(summary|totals):/ {s=$2} END {print s}')"
  rm -f "$work"/mandate.cg.*
  python3 -c "print(f'{\"$1\":<52} {int(\"$total\") / $n:>12,.0f} instructions per call ({$n} calls)')"
}
echo "== instructions per POST /v1/decide under callgrind (all server threads, durable audit included)"
measure "bearer task token" Bearer "$plain"
measure "DPoP-bound task token, a fresh proof per call" DPoP "$bound"
