#!/usr/bin/env bash
# Every proxy benchmark of the fast-path work in one sequence, each side by
# side with its peers, all tables printed at the end and saved to a file.
#
#   bench/all.sh            # full run (about 20 minutes)
#   QUICK=1 bench/all.sh    # short runs: checks that everything works
#
# It refuses to start when the 1-minute load average is above MAX_LOAD
# [0.3] (other work on the machine would distort every figure); FORCE=1 runs
# anyway and marks every table as measured on a LOADED machine.
#
# In order: HTTP/1.1 throughput against every peer (proxy.sh), HTTP/2 over
# TLS (h2.sh), two workers on two cores (scale.sh), memory per request in
# flight for INFLIGHT_COUNTS requests (inflight.sh), N requests held through
# one wake and the wake overhead (wake.sh), idle memory with 100 routes
# (idle.sh). Each script's own settings (ROUNDS, DURATION, PEERS, ...) pass
# through, but apply to all of them; run a script alone to tune one.
#
# Environment (defaults in brackets):
#   MAX_LOAD [0.3], FORCE [0]
#   INFLIGHT_COUNTS [2000 10000]   in-flight runs; the backend's delay is
#                                  6 s, or N * 1.5 ms when that is longer
#   HELD [10000]                   requests held through one wake
#   OUT [target/bench/all-DATE.md] where the tables are saved
#   QUICK [0]                      1: 1 round of 3 s, 1 s warm-up, 2000 held

set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
MAX_LOAD=${MAX_LOAD:-0.3}
INFLIGHT_COUNTS=${INFLIGHT_COUNTS:-2000 10000}
HELD=${HELD:-10000}
STAMP=$(date -u +%Y%m%dT%H%MZ)
OUT=${OUT:-$ROOT/target/bench/all-$STAMP.md}

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; then
	if [[ ${FORCE:-0} != 1 ]]; then
		log "the 1-minute load average is $load (> $MAX_LOAD): something else is running."
		log "Wait for a quiet machine, or run with FORCE=1 (every table is then marked LOADED)."
		exit 1
	fi
	log "WARNING: 1-minute load average $load > $MAX_LOAD: every figure of this run is from a LOADED machine"
	export BENCH_LOADED=1
else
	export BENCH_LOADED=0
fi
export BENCH_START_LOAD=$load

if [[ ${QUICK:-0} == 1 ]]; then
	export ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-3s} WARMUP=${WARMUP:-1s}
	HELD=${HELD_QUICK:-2000}
	INFLIGHT_COUNTS=${INFLIGHT_QUICK:-2000}
fi

log "building drowsy and the benchmark programs (release)"
(cd "$ROOT" && cargo build --release --quiet --bin drowsy --example inflight_bench --example wake_bench)
export SKIP_BUILD=1

mkdir -p "$(dirname "$OUT")"
{
	echo "# drowsy benchmarks, $STAMP"
	echo
	echo "$(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr)," \
		"drowsy $(drowsy_rev)"
	if [[ $BENCH_LOADED == 1 ]]; then
		echo "**LOADED machine**: 1-minute load average $load at start (FORCE=1)"
	else
		echo "quiet machine: 1-minute load average $load at start"
	fi
} >"$OUT"

FAILED=()
# run TITLE COMMAND...: runs one benchmark, its tables appended to OUT.
run() {
	local title=$1
	shift
	log "=== $title: $*"
	{
		echo
		echo "## $title"
		echo
		echo '```'
		echo "\$ $*"
	} >>"$OUT"
	local rc=0
	"$@" >>"$OUT" || rc=$?
	echo '```' >>"$OUT"
	if ((rc)); then
		echo "**failed** (exit $rc)" >>"$OUT"
		FAILED+=("$title")
	fi
}

run "HTTP/1.1 throughput, one core" "$BENCH/proxy.sh"
run "HTTP/2 over TLS, one core" "$BENCH/h2.sh"
run "Scaling: two workers on two cores" "$BENCH/scale.sh"
for n in $INFLIGHT_COUNTS; do
	delay=$((n * 3 / 2))
	((delay < 6000)) && delay=6000
	run "Memory per request in flight ($n)" env DELAY_MS="${DELAY_MS:-$delay}" "$BENCH/inflight.sh" "$n"
done
run "Held through one wake ($HELD)" "$BENCH/wake.sh" held "$HELD" 3000
run "Wake overhead, boot times spread over 50-2000 ms" "$BENCH/wake.sh" overhead 50 50-2000
run "Idle memory with 100 routes" "$BENCH/idle.sh" 100

echo
cat "$OUT"
echo
log "tables saved to $OUT"
if ((${#FAILED[@]})); then
	log "failed: ${FAILED[*]}"
	exit 1
fi
