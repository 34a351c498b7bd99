#!/usr/bin/env bash
# Idle gate benchmarks (see bench/README.md, "Idle gate: wake overhead,
# held requests, warm path"). Loopback only; every run is bounded.
#
#   bench/wake.sh [overhead|held|conns|warm|all] [args passed to the mode]
#
#   overhead [N=50] [BOOT_MS=50 | MIN-MAX]   time to first byte minus guest boot
#   held     [N=10000] [BOOT_MS=3000]        N connections held through one wake
#   conns    [N=10000]                       RSS of N connections without the gate
#   warm     [ROUNDS=5] [SECS=5]             guest route vs plain route, wrk
set -euo pipefail
cd "$(dirname "$0")/.."

which="${1:-all}"
shift || true

# 10 000 held connections need more than the usual 1024 descriptors, in
# drowsy (client side + backend side) and in the load process.
ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet --example wake_bench
bin=target/release/examples/wake_bench

need_wrk() {
    command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
    command -v taskset >/dev/null || { echo "taskset is missing (util-linux)" >&2; exit 1; }
    [ "$(nproc)" -ge 2 ] || { echo "warm needs 2 cores (drowsy on 0, wrk on 1)" >&2; exit 1; }
}

case "$which" in
    overhead) timeout 600 "$bin" overhead "$@" ;;
    held)     timeout 300 "$bin" held "$@" ;;
    conns)    timeout 300 "$bin" conns "$@" ;;
    warm)     need_wrk; timeout 600 "$bin" warm "$@" ;;
    all)
        timeout 600 "$bin" overhead 50 50
        timeout 600 "$bin" overhead 50 50-2000
        timeout 300 "$bin" held 10000 3000
        timeout 300 "$bin" conns 10000
        need_wrk; timeout 600 "$bin" warm 5 5
        ;;
    *) echo "usage: $0 [overhead|held|conns|warm|all] [args]" >&2; exit 2 ;;
esac
