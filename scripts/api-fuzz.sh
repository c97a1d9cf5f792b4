#!/usr/bin/env bash
# Fuzz the HTTP API from its own OpenAPI document with schemathesis (PyPI): thousands of
# generated and mutated requests against a real `mandate serve` on loopback. Fails on any
# 5xx (S5: bad input gets a 4xx, nothing breaks). Run from the repository root:
#   bash scripts/api-fuzz.sh [max-examples]
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${1:-25}"
venv="${MANDATE_FUZZ_VENV:-target/fuzz-venv}"
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --retries 5 'schemathesis>=4,<5'
fi

cargo build --quiet -p mandate
data="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
token="fuzz-admin-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
MANDATE_ADMIN_TOKEN="$token" ./target/debug/mandate serve --listen "127.0.0.1:$port" \
  --data-dir "$data/data" --policies examples/policies/demo >"$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
  sleep 0.1
done

"$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error \
  --max-examples "$examples" \
  --seed 20261122
