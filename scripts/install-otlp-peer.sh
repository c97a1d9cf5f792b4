#!/usr/bin/env bash
# Install the OpenTelemetry protocol's own Python classes (PyPI `opentelemetry-proto`, with
# `protobuf`) into a virtualenv under target/, for the OTLP export test: an independent
# decoder of what Mandate sends.
#   MANDATE_TEST_OTLP_PYTHON="$(bash scripts/install-otlp-peer.sh | tail -n 1)" \
#     cargo test -p mandate-server --test otlp
# Idempotent: an existing install is reused. The last line of stdout is the absolute path
# of the virtualenv's python (everything else goes to stderr). Override the virtualenv
# with MANDATE_OTLP_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${MANDATE_OTLP_VENV:-target/otlp-venv}"
spec="${MANDATE_OTLP_SPEC:-opentelemetry-proto>=1.27,<2}"

check() {
  "$venv/bin/python" -c 'from opentelemetry.proto.collector.trace.v1 import trace_service_pb2' 2>/dev/null
}

if ! check; then
  echo "installing $spec into $venv" >&2
  mkdir -p "$(dirname "$venv")"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --retries 5 "$spec" >&2
  check
fi
cd "$venv/bin"
echo "$(pwd -P)/python"
