#!/usr/bin/env bash
# Front door memory (see bench/README.md, "Front door: memory"): how much
# memory a few HTTP/2 clients that never read can make drowsy hold.
#
#   bench/memory.sh [CONNS=4] [STREAMS=256]
#   BEFORE=/path/to/older/drowsy bench/memory.sh   # the same load on another build, side by side
#
# The current tree is built with `cargo build --release`. An older build
# for BEFORE, e.g.:
#   git archive REV | tar -x -C /tmp/drowsy-old && (cd /tmp/drowsy-old && cargo build --release)
# It is run without the listen keys it does not know.
set -euo pipefail
cd "$(dirname "$0")/.."

conns="${1:-4}"
streams="${2:-256}"
cargo build --release --quiet --bin drowsy --example memory_bench
bench=target/release/examples/memory_bench
# One client address: the per-address cap is raised so the load is the
# same for both builds; every other limit is at its default.
new_keys="max_connections_per_ip: 100000"

if [ -n "${BEFORE:-}" ]; then
    echo "before: $BEFORE"
    timeout 300 "$bench" "$BEFORE" "$conns" "$streams"
fi
echo "after: target/release/drowsy"
timeout 300 "$bench" target/release/drowsy "$conns" "$streams" -- "$new_keys"
