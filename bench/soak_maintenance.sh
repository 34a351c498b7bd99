#!/bin/sh
# Soak of the maintenance rules: clients use every route while a backup job
# runs over every guest in turn and a guest migrates once a minute; no
# request may be lost and Proxmox may refuse none of drowsy's power calls.
# Not part of CI (it runs for minutes); see bench/README.md.
#
#   bench/soak_maintenance.sh [--seconds 300] [--clients 8] [--backup-ms 2500] [--migrate-every-s 60]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin drowsy --example soak_maintenance
exec target/release/examples/soak_maintenance --drowsy target/release/drowsy "$@"
