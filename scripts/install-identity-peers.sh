#!/usr/bin/env bash
# Install the independent identity peers into a virtualenv under target/, for the workload
# identity tests: PyPI `spiffe` (py-spiffe: verifies Mandate's JWT-SVIDs against its
# bundle), `joserfc` (an independent JOSE implementation: DPoP proofs, client assertions)
# and `mcp` (the official MCP SDK: its OAuth client-credentials flow against Mandate).
#   MANDATE_TEST_IDENTITY_PYTHON="$(bash scripts/install-identity-peers.sh | tail -n 1)" \
#     cargo test -p mandate-server --test identity
# Idempotent: an existing install is reused. The last line of stdout is the absolute path
# of the virtualenv's python (everything else goes to stderr). Override the virtualenv
# with MANDATE_IDENTITY_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${MANDATE_IDENTITY_VENV:-target/identity-venv}"
specs=("spiffe>=0.2,<1" "joserfc>=1.0,<2" "mcp>=1.20,<3" "httpx>=0.27,<1")

check() {
  "$venv/bin/python" -c 'import spiffe, joserfc, mcp, httpx' 2>/dev/null
}

if ! check; then
  echo "installing ${specs[*]} into $venv" >&2
  mkdir -p "$(dirname "$venv")"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --retries 5 "${specs[@]}" >&2
  check
fi
cd "$venv/bin"
echo "$(pwd -P)/python"
