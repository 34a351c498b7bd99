#!/usr/bin/env bash
# HTTP/2 over TLS: drowsy against nginx, HAProxy, Traefik 3 and Caddy 2 (every
# one of them takes h2 from the client and speaks HTTP/1.1 to the backend),
# h2load -c16 -m16, side by side in one run. The harness is bench/proxy.sh
# (MODE=h2); its settings apply (ROUNDS, DURATION, PEERS, CONNECTIONS,
# STREAMS, TLS13_CIPHER, ...). Method: bench/README.md.
#
# Quick run: ROUNDS=1 DURATION=3s WARMUP=1s bench/h2.sh
set -euo pipefail
MODE=h2 exec "$(dirname "${BASH_SOURCE[0]}")/proxy.sh" "$@"
