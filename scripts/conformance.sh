#!/usr/bin/env bash
# The MCP conformance suite (npm @modelcontextprotocol/conformance) against real MCP
# servers, directly and through Mandate's MCP gateway, for each requirement set the suite
# freezes (2025-11-25 and 2026-07-28, each run at its own wire version):
#
#   1. installs conformance/package.json (from its lockfile: the suite, Node 22, the
#      TypeScript SDK, server-everything) into target/conformance/, once;
#   2. starts two servers on loopback: conformance/fixture-server.mjs (implements what the
#      suite's server scenarios check) and @modelcontextprotocol/server-everything;
#   3. runs the suite's server scenarios against each, directly;
#   4. starts `mandate serve` (temporary data directory, a policy that permits every tool of
#      both servers, an [[mcp_server]] for each), starts one task per server whose grant
#      covers every tool the server lists (and its pseudo-tools: resources, prompts,
#      sampling, elicitation, roots), and runs the suite again against
#      /mcp/<server>, through conformance/auth-shim.mjs (the suite cannot send headers; the
#      shim adds the task token);
#   5. prints the scenario × {direct, through Mandate} table, writes it to
#      target/conformance/table.md, and exits 1 if a scenario passes directly but fails
#      through Mandate.
#
#   bash scripts/conformance.sh [--report-only]
#     --report-only          print the table and exit 0 whatever it says
#   MANDATE_BIN=path         use this mandate binary instead of `cargo build -p mandate`
#   CONFORMANCE_SETS="…"     requirement sets to run (default "2025-11-25 2026-07-28")
#   CONFORMANCE_SERVERS="…"  servers to run (default "fixture everything")
#   CONFORMANCE_SESSIONS_PER_AGENT=N  Mandate's [limits] max_mcp_sessions_per_agent (default:
#                            Mandate's own, 16; the suite leaves the sessions of scenarios
#                            that fail open, and each holds an upstream session)
#
# The suite's output and per-scenario checks.json: target/conformance/results/<server>/
# <requirement set>/{direct,mandate}/; the servers' and Mandate's logs beside them.
set -euo pipefail
cd "$(dirname "$0")/.."

report_only=""
for arg in "$@"; do
  case "$arg" in
    --report-only) report_only="--report-only" ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "conformance: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done
read -r -a sets <<<"${CONFORMANCE_SETS:-2025-11-25 2026-07-28}"
read -r -a servers <<<"${CONFORMANCE_SERVERS:-fixture everything}"

work=target/conformance
results="$work/results"
log() { echo "== $*" >&2; }

# ---- 1. npm packages (npm ci from the committed lockfile, skipped when already installed)
install() {
  mkdir -p "$work"
  local want have
  want="$(cat conformance/package.json conformance/package-lock.json | sha256sum | cut -d' ' -f1)"
  have="$(cat "$work/.installed" 2>/dev/null || true)"
  if [ "$want" != "$have" ] || [ ! -x "$work/node_modules/.bin/node" ]; then
    log "installing conformance/package.json into $work (npm ci)"
    cp conformance/package.json conformance/package-lock.json "$work/"
    (cd "$work" && npm ci --no-audit --no-fund --loglevel=error) >&2
    echo "$want" >"$work/.installed"
  fi
  # The scripts run from beside node_modules, where their imports resolve.
  cp conformance/*.mjs "$work/"
}
install
node="$PWD/$work/node_modules/.bin/node" # Node 22: the suite needs >= 22
suite=("$node" "$PWD/$work/node_modules/@modelcontextprotocol/conformance/dist/index.js")
log "conformance suite $("${suite[@]}" --version), node $("$node" --version)"

# ---- the mandate binary
if [ -n "${MANDATE_BIN:-}" ]; then
  mandate="$MANDATE_BIN"
else
  log "cargo build -p mandate"
  cargo build --quiet -p mandate
  mandate="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/mandate"
fi

# ---- processes: every one started here is stopped on exit
tmp="$(mktemp -d)"
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD…: runs CMD in the background, its output in $results/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$results/$name.log" 2>&1 &
  pids+=($!)
}
# port NAME REGEX: waits (30 s) until NAME's log has a line matching REGEX, whose first
# group is a port, and prints it.
port() {
  local name=$1 regex=$2 pid=${pids[-1]} line
  for _ in $(seq 300); do
    line="$(grep -m1 -oE "$regex" "$results/$name.log" || true)"
    if [ -n "$line" ]; then
      [[ "$line" =~ $regex ]] && echo "${BASH_REMATCH[1]}" && return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "conformance: $name exited before listening:" >&2
      cat "$results/$name.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "conformance: $name did not start listening in 30 s" >&2
  cat "$results/$name.log" >&2
  return 1
}

# run_suite SERVER LEG URL: every requirement set against URL, into $results/SERVER/SET/LEG.
run_suite() {
  local server=$1 leg=$2 url=$3 set out
  for set in "${sets[@]}"; do
    out="$results/$server/$set/$leg"
    mkdir -p "$out"
    log "$server, $leg, requirement set $set: $url"
    # In the background, so that a signal stops the run at once (the trap kills it). The
    # suite exits 1 when a scenario fails; that is what the table is for.
    "${suite[@]}" server --url "$url" --requirements "$set" -o "$out" >"$out/suite.log" 2>&1 &
    pids+=($!)
    wait "${pids[-1]}" || true
    unset 'pids[-1]'
    grep -E '^(Total:|Not scored)' "$out/suite.log" | sed 's/^/   /' >&2 || true
  done
}

rm -rf "$results"
mkdir -p "$results"

# ---- 2. the servers
declare -A url
for server in "${servers[@]}"; do
  case "$server" in
    fixture)
      start fixture "$node" "$PWD/$work/fixture-server.mjs" 0
      p="$(port fixture 'fixture listening on http://127\.0\.0\.1:([0-9]+)')"
      ;;
    everything)
      # It listens on every interface given a port: the preload binds it to loopback.
      start everything env PORT=0 "$node" --import "$PWD/$work/loopback-listen.mjs" \
        "$PWD/$work/node_modules/@modelcontextprotocol/server-everything/dist/index.js" \
        streamableHttp
      p="$(port everything 'loopback-listen: http://127\.0\.0\.1:([0-9]+)')"
      ;;
    *)
      echo "conformance: unknown server $server (fixture, everything)" >&2
      exit 2
      ;;
  esac
  url[$server]="http://127.0.0.1:$p/mcp"
done

# ---- 3. directly
for server in "${servers[@]}"; do
  run_suite "$server" direct "${url[$server]}"
done

# ---- 4. through Mandate
admin="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
mkdir -p "$tmp/policies"
cat >"$tmp/policies/conformance.cedar" <<'CEDAR'
// The conformance run: any active agent may start a task, and a task may use every tool
// it was granted (the grant lists exactly the tools of the server under test).

@id("start")
@reason("active agents may start tasks")
permit (principal, action == Mandate::Action::"start_task", resource)
when { principal.status == "active" };

@id("conformance-every-tool")
@reason("the conformance suite calls every tool of the servers under test")
permit (
  principal,
  action in [Mandate::Action::"read", Mandate::Action::"write", Mandate::Action::"delete", Mandate::Action::"execute"],
  resource
);
CEDAR
for server in "${servers[@]}"; do
  cat >>"$tmp/gateway.toml" <<TOML
[[mcp_server]]
name = "$server"
url = "${url[$server]}"
allow_private = true

TOML
done
if [ -n "${CONFORMANCE_SESSIONS_PER_AGENT:-}" ]; then
  printf '[limits]\nmax_mcp_sessions_per_agent = %d\n' "$CONFORMANCE_SESSIONS_PER_AGENT" \
    >>"$tmp/gateway.toml"
fi
cp "$tmp/gateway.toml" "$results/gateway.toml"
start mandate env MANDATE_ADMIN_TOKEN="$admin" NO_COLOR=1 "$mandate" serve \
  --listen 127.0.0.1:0 --no-watch --data-dir "$tmp/data" --policies "$tmp/policies" \
  --gateway-config "$tmp/gateway.toml"
mandate_port="$(port mandate 'mandate listening on http://127\.0\.0\.1:([0-9]+)')"
log "mandate serve on 127.0.0.1:$mandate_port"

for server in "${servers[@]}"; do
  token="$(MANDATE_ADMIN_TOKEN="$admin" "$node" "$PWD/$work/harness.mjs" grant \
    "http://127.0.0.1:$mandate_port" "$server" "${url[$server]}")"
  start "shim-$server" env SHIM_TOKEN="$token" "$node" "$PWD/$work/auth-shim.mjs" \
    "127.0.0.1:$mandate_port" 0
  shim_port="$(port "shim-$server" 'shim listening on http://127\.0\.0\.1:([0-9]+)')"
  run_suite "$server" mandate "http://127.0.0.1:$shim_port/mcp/$server"
done

# ---- 5. the table
status=0
"$node" "$PWD/$work/harness.mjs" table "$results" "$work/table.md" $report_only || status=$?
log "table written to $work/table.md"
exit "$status"
