#!/usr/bin/env bash
# The decide path's cost of containment in instructions (callgrind: stable whatever else
# the machine runs). The containment bench runs one series of in-process `Engine::decide`
# calls (audit commit included) with no rule (off), the default rule (a honeytoken call
# quarantines: the tap passes on only decisions naming the honeytoken) or every rule kind;
# each is run with N and 2N calls, and the difference divided by N is the cost of one
# decision, set-up excluded. Run from the repository root:
#   bash scripts/callgrind-containment.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000}"
if ! command -v valgrind >/dev/null && command -v apt-get >/dev/null; then
  (apt-get install -y -q valgrind || sudo apt-get install -y -q valgrind) >/dev/null
fi
cargo bench -p mandate-server --bench containment --no-run >/dev/null 2>&1
bin="$(ls -t target/release/deps/containment-* | grep -v '\.d$' | head -n 1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
count() {
  CONTAIN_BENCH_ONLY="$1" CONTAIN_BENCH_CALLS="$2" CONTAIN_BENCH_CLIENTS=4 \
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin" --bench >/dev/null 2>&1
  awk '/^(summary|totals):/ {s=$2} END {print s}' "$work/cg.out"
  rm -f "$work/cg.out"
}
for mode in off default on; do
  a="$(count "$mode" "$n")"
  b="$(count "$mode" "$((2 * n))")"
  python3 -c "print(f'containment {\"$mode\":<8} {($b - $a) / $n:>12,.0f} instructions per decision ({$n} more decisions)')"
done
