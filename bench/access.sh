#!/usr/bin/env bash
# What access policies cost on the warm path: routes that differ only in
# their `access` list, side by side in one run (examples/access_bench.rs).
# Usage: bench/access.sh [ROUNDS] [REQUESTS_PER_ROUND]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example access_bench
exec target/release/examples/access_bench "${1:-5}" "${2:-20000}"
