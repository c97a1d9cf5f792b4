#!/usr/bin/env bash
# P6: durable audit events per second through AuthZEN batches (`POST
# /access/v1/evaluations`, 64 items each, every item's event durable before the answer)
# against a raw SQLite baseline in the same run: Python's sqlite3 (the C library, no
# server), the same table, WAL, synchronous=FULL, a SHA-256 hash chain over each row, one
# transaction per batch of 64. Then `mandate audit verify` speed over the log the run wrote.
# Uses the release binary if there is one (builds it only when missing). Run from the
# repository root:
#   bash scripts/bench-audit.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-10}"
conns="${2:-16}"
batch=64
if ! command -v wrk >/dev/null && command -v apt-get >/dev/null; then
  (apt-get install -y -q wrk || sudo apt-get install -y -q wrk) >/dev/null
fi
command -v wrk >/dev/null || { echo "wrk is needed (Debian package wrk)"; exit 1; }
[ -x target/release/mandate ] || cargo build --release --quiet -p mandate
m=./target/release/mandate
work="$(mktemp -d "${BENCH_DIR:-/tmp}/mandate-bench.XXXXXX")"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
mport="$(port)"
export MANDATE_ADMIN_TOKEN="bench-admin-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export MANDATE_URL="http://127.0.0.1:$mport"
MANDATE_LOG=warn $m serve --listen "127.0.0.1:$mport" --data-dir "$work/data" \
  --policies examples/policies/demo --no-watch \
  --agent-decisions-per-sec 100000000 --task-decisions-per-sec 100000000 >"$work/server.log" 2>&1 &
mandate_pid=$!
trap 'kill $mandate_pid 2>/dev/null || true; rm -rf "$work"' EXIT
until curl -fsS "$MANDATE_URL/readyz" >/dev/null 2>&1; do sleep 0.05; done

join="$($m agent register bench-bot --owner bench@example.com --tier 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["join_token"])')"
identity="$($m agent attest bench-bot --join-token "$join" | python3 -c 'import json,sys; print(json.load(sys.stdin)["identity_token"])')"
token="$($m task start --identity-token "$identity" --purpose "benchmark" --tool tickets.search \
  --action read --data-domain support --ttl 1800 | python3 -c 'import json,sys; print(json.load(sys.stdin)["task_token"])')"
body="$(python3 - "$token" "$batch" <<'PY'
import json, sys
item = {
    "resource": {"type": "tool", "id": "tickets.search", "properties": {"resource": "queue/open", "data_domain": "support"}},
    "action": {"name": "read"},
    "context": {"arguments": {"status": "open", "limit": 20}},
}
print(json.dumps({
    "subject": {"type": "agent", "properties": {"token": sys.argv[1]}},
    "evaluations": [item] * int(sys.argv[2]),
}))
PY
)"
printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[%s]]\n' "$body" >"$work/post.lua"
curl -s -X POST -H 'Content-Type: application/json' --data "$body" "$MANDATE_URL/access/v1/evaluations" |
  python3 -c 'import json,sys; d=json.load(sys.stdin)["evaluations"]; assert len(d)=='"$batch"' and all(e["decision"] for e in d), d; print("sanity: every item allowed")'

echo "== mandate: AuthZEN batches of $batch, $conns connections, ${secs}s"
wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$work/post.lua" "$MANDATE_URL/access/v1/evaluations" | tee "$work/wrk.txt" |
  grep -E "Requests/sec|Latency |50%|99%|Non-2xx"
rps="$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")"
python3 -c "print(f'mandate durable audit events/s: {float($rps) * $batch:,.0f}')"

echo "== raw SQLite baseline: same table, WAL, synchronous=FULL, chained SHA-256, $batch rows per transaction, ${secs}s"
python3 - "$work/raw.db" "$secs" "$batch" <<'PY'
import hashlib, json, sqlite3, sys, time
path, secs, batch = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE audit_events (seq BIGINT PRIMARY KEY, ts_ms BIGINT NOT NULL, kind TEXT NOT NULL, agent TEXT, task_id TEXT, data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)")
db.execute("CREATE INDEX audit_events_by_task ON audit_events (task_id, seq)")
db.execute("CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL)")
db.execute("INSERT INTO audit_head VALUES (1, 0, ?)", ("0" * 64,))
data = json.dumps({"decision_id": "dec_0123456789abcdef", "tool": "tickets.search", "action": "read", "resource": "queue/open", "outcome": "allow", "policies": ["support-read"], "bundle_version": "sha256:" + "ab" * 32, "args_digest": "cd" * 32, "latency_us": 40}, sort_keys=True, separators=(",", ":"))
seq, prev, n = 0, "0" * 64, 0
end = time.monotonic() + secs
start = time.monotonic()
while time.monotonic() < end:
    db.execute("BEGIN IMMEDIATE")
    rows = []
    for _ in range(batch):
        seq += 1
        h = hashlib.sha256(json.dumps([seq, 1, "decision", "bench-bot", "task_x", data, prev], separators=(",", ":")).encode()).hexdigest()
        rows.append((seq, 1, "decision", "bench-bot", "task_x", data, prev, h)); prev = h
    db.executemany("INSERT INTO audit_events VALUES (?,?,?,?,?,?,?,?)", rows)
    db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
    db.execute("COMMIT")
    n += batch
print(f"raw SQLite rows/s: {n / (time.monotonic() - start):,.0f}")
PY

kill $mandate_pid; wait $mandate_pid 2>/dev/null || true
echo "== mandate audit verify over the run's log"
t0="$(date +%s%N)"
out="$($m audit verify --data-dir "$work/data" 2>&1 | tail -1)"
t1="$(date +%s%N)"
echo "$out"
python3 -c "import re; n=int(re.search(r'(\d+) records', '''$out''').group(1)); s=($t1-$t0)/1e9; print(f'verify: {n:,} records in {s:.2f}s = {n/s:,.0f} records/s')"
