#!/usr/bin/env bash
# A new connection for every request: drowsy against nginx, HAProxy,
# Traefik 3 and Caddy 2, wrk -t1 -c64 sending `Connection: close`, side by
# side in one run. What it adds to bench/proxy.sh's keep-alive figures is
# the cost of accepting, handing over and closing a client connection. The
# harness is bench/proxy.sh (MODE=close); its settings apply. Method:
# bench/README.md.
#
# Quick run: ROUNDS=1 DURATION=3s WARMUP=1s bench/close.sh
set -euo pipefail
MODE=close exec "$(dirname "${BASH_SOURCE[0]}")/proxy.sh" "$@"
