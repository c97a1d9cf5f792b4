#!/usr/bin/env bash
# P3: the HTTP gateway's added latency and throughput. One upstream (a bare hyper server
# answering a constant `{"ok":true}` on any path, keep-alive) is called in the same run,
# with the same load tool and settings, three ways
# (and a fourth, diagnostic):
#   direct   wrk -> upstream
#   nginx    wrk -> nginx (Debian package, reverse proxy, keep-alive upstream pool, no
#            authorization; it injects the same bearer header the gateway injects)
#   mandate  wrk -> `mandate serve --gateway-config` /gw/tickets/... (token verified, call
#            decided by Cedar, decision durably audited, credential injected, response
#            relayed with redaction, result audited)
#   tmpfs    diagnostic only: the same, a second server whose store is on tmpfs, where
#            fsync returns at once (not durable): what a call costs besides the disk flush
# Two rounds: a latency round at one connection (added latency without queueing) and a
# throughput round at [connections]. Installs wrk and nginx (Debian) when missing. Run
# from the repository root:
#   bash scripts/bench-gateway.sh [seconds] [connections]
# Environment: NGINX_WORKERS (default auto: one per core); TMPFS_DIAG=0 skips the tmpfs
# diagnostic. P3 is judged on the durable server only.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-10}"
conns="${2:-32}"
nginx_workers="${NGINX_WORKERS:-auto}"
tmpfs_diag="${TMPFS_DIAG:-1}"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ "${#need[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
  as_root=(); [ "$(id -u)" = 0 ] || as_root=(sudo)
  install() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; }
  install || { "${as_root[@]}" apt-get update -q >/dev/null && install; }
fi
command -v wrk >/dev/null || { echo "wrk is needed (Debian package wrk)"; exit 1; }
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$NGINX" ] || { echo "nginx is needed (Debian package nginx)"; exit 1; }

[ -x target/release/mandate ] || cargo build --release --quiet -p mandate  # never rebuilds an existing binary
[ -x target/release/examples/constant_server ] || cargo build --release --quiet -p mandate-server --example constant_server
work="$(mktemp -d)"
ngx="$(mktemp -d)"
chmod 755 "$ngx" # nginx workers drop to an unprivileged user when started as root
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
mport="$(port)"; cport="$(port)"; nport="$(port)"
export MANDATE_ADMIN_TOKEN="bench-admin-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export MANDATE_URL="http://127.0.0.1:$mport"
secret='bench-secret-value-123'

cat >"$work/gateway.toml" <<TOML
# Limits raised so that only the work of a call is measured, never a refusal.
[limits]
agent_rate_per_sec = 1000000
agent_burst = 1000000
task_rate_per_sec = 1000000
task_burst = 1000000
max_in_flight = 4096
max_in_flight_per_agent = 4096

[[upstream]]
name = "tickets"
base_url = "http://127.0.0.1:$cport"
allow_private = true
credential = { secret = "tickets-token", kind = "bearer" }

[[route]]
upstream = "tickets"
method = "GET"
path = "/tickets"
tool = "tickets.search"
data_domain = "support"
TOML

cat >"$ngx/nginx.conf" <<NGINX
worker_processes $nginx_workers;
daemon off;
pid $ngx/nginx.pid;
error_log $ngx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $ngx/client_body;
  proxy_temp_path $ngx/proxy;
  fastcgi_temp_path $ngx/fastcgi;
  uwsgi_temp_path $ngx/uwsgi;
  scgi_temp_path $ngx/scgi;
  upstream constant {
    server 127.0.0.1:$cport;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$nport;
    location / {
      proxy_pass http://constant;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $secret";
    }
  }
}
NGINX

./target/release/examples/constant_server "127.0.0.1:$cport" '{"ok":true}' 2>/dev/null &
constant_pid=$!
"$NGINX" -p "$ngx" -c "$ngx/nginx.conf" -e "$ngx/error.log" &
nginx_pid=$!
mandate_pids=()
cleanup() {
  kill "${mandate_pids[@]}" "$constant_pid" 2>/dev/null || true
  kill -QUIT "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
  rm -rf "$work" "$ngx" "${shm:-}"
}
trap cleanup EXIT
wait_port() {
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened"; cat "$work"/*.log "$ngx/error.log" 2>/dev/null; exit 1
}
wait_port "$cport"; wait_port "$nport"

m=./target/release/mandate
# Starts `mandate serve` with the gateway on port $1, data in $2; stores the upstream's
# credential, registers an agent and starts a task; sets $token to its task token.
start_mandate() {
  MANDATE_LOG=warn $m serve --listen "127.0.0.1:$1" --data-dir "$2" --policies examples/policies/demo \
    --no-watch --gateway-config "$work/gateway.toml" \
    --agent-decisions-per-sec 100000000 --task-decisions-per-sec 100000000 >"$work/server-$1.log" 2>&1 &
  mandate_pids+=($!)
  wait_port "$1"
  local url="http://127.0.0.1:$1" join identity
  printf '%s' "$secret" | MANDATE_URL="$url" $m secret put tickets-token --description "bench upstream token" >/dev/null
  join="$(MANDATE_URL="$url" $m agent register bench-bot --owner bench@example.com --tier 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["join_token"])')"
  identity="$(MANDATE_URL="$url" $m agent attest bench-bot --join-token "$join" | python3 -c 'import json,sys; print(json.load(sys.stdin)["identity_token"])')"
  # The gateway decides each call with the upstream's host:port as its destination: the
  # task's grant must name it.
  token="$(MANDATE_URL="$url" $m task start --identity-token "$identity" --purpose "benchmark" --tool tickets.search \
    --action read --data-domain support --destination "127.0.0.1:$cport" --ttl 1800 \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["task_token"])')"
}
start_mandate "$mport" "$work/data"
gw_token="$token"
targets=(direct nginx mandate)
if [ "$tmpfs_diag" = 1 ]; then
  # Diagnostic only: a second server, same configuration, its store on tmpfs, where fsync
  # returns at once. Not a durable configuration: it shows what a gateway call costs
  # besides the disk flush of its audit events.
  shm="$(mktemp -d -p /dev/shm)"
  sport="$(port)"
  start_mandate "$sport" "$shm/data"
  shm_token="$token"
  targets+=(tmpfs)
fi

declare -A url tok
url[direct]="http://127.0.0.1:$cport/tickets?status=open"; tok[direct]="$gw_token"
url[nginx]="http://127.0.0.1:$nport/tickets?status=open"; tok[nginx]="$gw_token"
url[mandate]="$MANDATE_URL/gw/tickets/tickets?status=open"; tok[mandate]="$gw_token"
if [ "$tmpfs_diag" = 1 ]; then
  url[tmpfs]="http://127.0.0.1:$sport/gw/tickets/tickets?status=open"; tok[tmpfs]="$shm_token"
fi

# Sanity: every path answers 200 with the upstream's body; a gateway answer carries its
# decision id (the call was decided, then forwarded).
for n in "${targets[@]}"; do
  out="$(curl -s -D "$work/headers" -H "Authorization: Bearer ${tok[$n]}" "${url[$n]}")"
  code="$(head -1 "$work/headers" | cut -d' ' -f2)"
  [ "$code" = 200 ] && [ "$out" = '{"ok":true}' ] || { echo "sanity: $n ${url[$n]} answered $code $out"; exit 1; }
  case "$n" in mandate|tmpfs)
    grep -qi '^x-mandate-decision-id:' "$work/headers" || { echo "sanity: the $n gateway answer has no decision id"; exit 1; }
  esac
done
echo "sanity: ${targets[*]} answer 200 {\"ok\":true}; the gateway's answers carry their decision id"

# The CPU time (clock ticks) of the process serving each path, the upstream's excluded
# for the proxies: what one call costs the proxy, beside its latency.
declare -A pids
pids[direct]="$constant_pid"
pids[nginx]="$nginx_pid $(ps -o pid= --ppid "$nginx_pid" | tr '\n' ' ')"
pids[mandate]="${mandate_pids[0]}"
[ "$tmpfs_diag" = 1 ] && pids[tmpfs]="${mandate_pids[1]}"
ticks() {
  local t=0 p f
  for p in $1; do read -r -a f <"/proc/$p/stat"; t=$((t + f[13] + f[14])); done
  echo "$t"
}
# The same request everywhere, the task token as bearer (the upstream and nginx ignore it;
# nginx and the gateway replace it with the upstream's credential).
run() { # name threads connections
  local h="Authorization: Bearer ${tok[$1]}" before
  wrk -t"$2" -c"$3" -d2s -H "$h" "${url[$1]}" >/dev/null # warm-up: pools, caches
  before="$(ticks "${pids[$1]}")"
  wrk -t"$2" -c"$3" -d"${secs}s" --latency -H "$h" "${url[$1]}" >"$work/wrk-$1-$3.txt"
  echo $(($(ticks "${pids[$1]}") - before)) >"$work/cpu-$1-$3.txt"
}
# Other work on the machine skews every figure: say how busy it was.
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for c in 1 "$conns"; do
  t=2; [ "$c" -lt 2 ] && t=1
  for n in "${targets[@]}"; do run "$n" "$t" "$c"; done
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $("$NGINX" -v 2>&1 | cut -d' ' -f3), worker_processes $nginx_workers; $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "load average before the runs: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "runs: ${secs}s each after a 2s warm-up, wrk -t1 at 1 connection, -t2 otherwise; GET /tickets?status=open with a bearer header"
echo "server CPU/call: user+system CPU of the process answering (upstream for direct; nginx's workers; mandate), per request"
python3 - "$work" "$(getconf CLK_TCK)" "${targets[*]}" 1 "$conns" <<'PY'
import re, sys
work, tck, targets, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
units = {"us": 1.0, "ms": 1000.0, "s": 1e6}
labels = {
    "direct": "direct to the upstream",
    "nginx": "nginx proxy, no authorization",
    "mandate": "Mandate gateway (decided, durably audited)",
    "tmpfs": "diagnostic: Mandate gateway, store on tmpfs (fsync a no-op; not durable)",
}
def us(text):
    n, u = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(n) * units[u]
def parse(path):
    t = open(path).read()
    pct = {p: us(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", t, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    total = int(re.search(r"(\d+) requests in", t).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    errs = re.search(r"Socket errors:.*", t)
    cpu = int(open(path.replace("/wrk-", "/cpu-")).read()) / tck * 1e6 / max(total, 1)
    return rps, pct, int(bad.group(1)) if bad else 0, errs.group(0) if errs else "", cpu
def fmt(v):
    return f"{v:.0f} µs" if abs(v) < 1000 else f"{v / 1000:.2f} ms"
for c in rounds:
    r = {n: parse(f"{work}/wrk-{n}-{c}.txt") for n in targets}
    print(f"\n-- {c} connection(s)")
    print("| path | requests/s | p50 | p90 | p99 | added p50 | added p99 | server CPU/call | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    d = r["direct"][1]
    for n in targets:
        rps, p, bad, errs, cpu = r[n]
        add50 = "–" if n == "direct" else fmt(p["50"] - d["50"])
        add99 = "–" if n == "direct" else fmt(p["99"] - d["99"])
        print(f"| {labels[n]} | {rps:,.0f} | {fmt(p['50'])} | {fmt(p['90'])} | {fmt(p['99'])} | {add50} | {add99} | {cpu:.0f} µs | {bad} |")
        if errs:
            print(f"  ({n}: {errs})")
    g, x = r["mandate"][1], r["nginx"][1]
    met = (g["50"] - d["50"] <= 100 and g["99"] - d["99"] <= 1000
           and g["50"] <= x["50"] and g["99"] <= x["99"])
    print(f"P3 at {c} connection(s) (added p50 ≤ 100 µs, added p99 ≤ 1 ms, no worse than nginx): "
          f"{'met' if met else 'NOT met'}")
PY
echo
echo "audit after the run: $($m audit verify --data-dir "$work/data" 2>&1 | tail -1)"
if [ "$tmpfs_diag" = 1 ]; then
  echo "audit after the run (tmpfs diagnostic): $($m audit verify --data-dir "$shm/data" 2>&1 | tail -1)"
fi
