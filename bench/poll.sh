#!/bin/sh
# Proxmox API poll cost against cluster size: API calls per poll cycle, CPU
# time per cycle and cache memory for 10, 100, 1000 and 5000 simulated
# guests. Everything runs on loopback; see bench/README.md.
#
#   bench/poll.sh [--sizes 10,100,1000,5000] [--cycles 100] [--interval-ms 100]
#                 [--changing 5] [--needed 20] [--by-name]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --example poll_cost
exec target/release/examples/poll_cost "$@"
