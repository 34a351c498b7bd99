#!/usr/bin/env bash
# Scaling: drowsy with two workers (TOKIO_WORKER_THREADS=2) against nginx with
# two (worker_processes 2), and each with one, side by side in one run.
#
# The machine has two cores, so nothing can be kept apart: the proxy, the
# client (wrk -t2 -c64) and the backend (nginx, 2 workers) all run on cores
# 0 and 1. The client's and the backend's work per request is the same
# whichever proxy is measured, so the ratios compare the proxies; the
# absolute req/s are those of the whole machine. The harness is
# bench/proxy.sh; its settings apply. Method: bench/README.md.
#
# Quick run: ROUNDS=1 DURATION=3s WARMUP=1s bench/scale.sh
set -euo pipefail
export ENTRIES=${ENTRIES:-"drowsy:2 nginx:2 drowsy:1 nginx:1"}
export PROXY_CPU=${PROXY_CPU:-0,1} CLIENT_CPU=${CLIENT_CPU:-0,1}
export BACKEND_CPU=${BACKEND_CPU:-0,1} BACKEND_WORKERS=${BACKEND_WORKERS:-2}
export THREADS=${THREADS:-2} ROUNDS=${ROUNDS:-3}
export TITLE=${TITLE:-"Scaling: two workers on two cores, shared with the client and the backend"}
exec "$(dirname "${BASH_SOURCE[0]}")/proxy.sh" "$@"
