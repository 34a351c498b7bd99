#!/bin/sh
# The per-client maps of the request path (rate-limit buckets, connections
# per address) with one and two workers, each pinned to a core; see
# bench/README.md, "Per-client maps".
#
#   bench/limits.sh [OPS_PER_WORKER=2000000]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --example limits_bench
exec taskset -c 0,1 target/release/examples/limits_bench "$@"
