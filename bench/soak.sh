#!/bin/sh
# Soak of the idle gate: many clients against guests that sleep after a few
# hundred milliseconds, the config reloaded every few seconds with other
# sleep settings; no request may be lost. Then drowsy's CPU while idle.
# Not part of CI (it runs for minutes); see bench/README.md.
#
#   bench/soak.sh [--seconds 180] [--clients 12] [--reload-every-ms 3000]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin drowsy --example soak
exec target/release/examples/soak --drowsy target/release/drowsy "$@"
