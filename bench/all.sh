#!/usr/bin/env bash
# Every proxy benchmark of the fast-path work in one sequence, each side by
# side with its peers, written as one markdown report (tables, method,
# versions) to target/bench/ and printed at the end.
#
#   bench/all.sh                               # full run (about 20 minutes)
#   QUICK=1 bench/all.sh                       # short runs: checks that everything works
#   DROWSY_BIN=/path/to/drowsy bench/all.sh    # benchmark that binary (nothing built for it)
#
# It refuses to start when the 1-minute load average is above MAX_LOAD
# [0.3] (other work on the machine would distort every figure); FORCE=1 runs
# anyway and marks every table as measured on a LOADED machine.
#
# In order: HTTP/1.1 throughput against every peer (proxy.sh), the same
# with a new connection per request (close.sh), HTTP/2 over TLS (h2.sh),
# two workers on two cores (scale.sh), memory per request in flight beside
# nginx and HELD requests held through one wake (inflight.sh), idle memory
# with 100 routes (idle.sh), and the wake overhead (wake.sh overhead). Each
# script's own settings (ROUNDS, DURATION, PEERS, ...) pass through, but
# apply to all of them; run a script alone to tune one.
#
# The wake overhead is measured by examples/wake_bench.rs, which runs drowsy
# in its own process from this tree's source: with DROWSY_BIN it still
# measures this tree (the report says so).
#
# Environment (defaults in brackets):
#   MAX_LOAD [0.3], FORCE [0]
#   INFLIGHT_COUNTS [2000 10000]   requests in flight beside nginx; a count
#                                  needing more file descriptors than the
#                                  hard limit allows is replaced, with a
#                                  note, by the largest count that fits
#   HELD [10000]                   requests held through one wake
#   WAKES [50]                     wakes for the overhead (boot 50-2000 ms)
#   OUT [target/bench/all-DATE.md] the report
#   QUICK [0]                      1: 1 round of 3 s, 1 s warm-up, 2000 in
#                                  flight, 10 wakes

set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

MAX_LOAD=${MAX_LOAD:-0.3}
INFLIGHT_COUNTS=${INFLIGHT_COUNTS:-2000 10000}
HELD=${HELD:-10000}
WAKES=${WAKES:-50}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/target/bench/all-$STAMP.md}

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
# Every benchmark reports this load, not the one the earlier ones caused.
export BENCH_START_LOAD=$load MAX_LOAD

if [[ ${QUICK:-0} == 1 ]]; then
	export ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-3s} WARMUP=${WARMUP:-1s}
	INFLIGHT_COUNTS=${INFLIGHT_QUICK:-2000}
	WAKES=${WAKES_QUICK:-10}
fi

examples=(--example inflight_bench --example wake_bench)
if ((DROWSY_GIVEN)); then
	[[ -x $DROWSY_BIN ]] || die "DROWSY_BIN=$DROWSY_BIN is not an executable"
	log "building the benchmark programs (release); drowsy is $DROWSY_BIN"
	(cd "$ROOT" && cargo build --release --quiet "${examples[@]}")
else
	log "building drowsy and the benchmark programs (release)"
	(cd "$ROOT" && cargo build --release --quiet --bin drowsy "${examples[@]}")
fi
export SKIP_BUILD=1
started=$(date +%s)

tool_versions() {
	local v=()
	v+=("$(wrk --version 2>&1 | awk 'NR == 1 { print "wrk " $2 }' || true)")
	v+=("$(h2load --version 2>&1 | awk 'NR == 1 { print $2 }')")
	v+=("$(rustc --version 2>/dev/null | awk '{ print "rustc " $2 }')")
	local line
	printf -v line '%s, ' "${v[@]}"
	echo "${line%, }"
}

mkdir -p "$(dirname "$OUT")"
{
	echo "# drowsy benchmarks, $STAMP"
	echo
	echo "- machine: $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr)"
	echo "- drowsy: $(drowsy_rev)"
	echo "- tools: $(tool_versions); each table lists the proxies' versions"
	if [[ $BENCH_LOADED == 1 ]]; then
		echo "- **LOADED machine**: 1-minute load average $load at start (above $MAX_LOAD; run with FORCE=1)"
	else
		echo "- quiet machine: 1-minute load average $load at start (at most $MAX_LOAD)"
	fi
	[[ ${QUICK:-0} == 1 ]] && echo "- **QUICK=1**: short runs that check the harness; not figures"
	cat <<EOF

## Method

- Every proxy forwards to the same backend (nginx answering \`200 ok\`)
  with kept-alive backend connections, X-Forwarded-For/-Proto/-Host and no
  access log; drowsy runs with \`--log-level warn\` (access log off).
- One core: the proxy under test is pinned to core 0 (\`taskset\`) with one
  worker (drowsy \`TOKIO_WORKER_THREADS=1\`, nginx \`worker_processes 1\`,
  HAProxy \`nbthread 1\`, Traefik and Caddy \`GOMAXPROCS=1\`); client and
  backend share core 1. Scaling: everything on cores 0 and 1.
- Rounds: one warm-up run per proxy, then rounds that run every proxy once,
  each round starting with the next proxy; tables show medians over rounds.
- CPU us/request: utime + stime of the proxy's processes
  (\`/proc/PID/stat\`, nginx master and workers) over a run, divided by the
  requests the client completed in it. Runs where core 0 was busier than
  the proxy alone are flagged (other work competed).
- Memory per request: RSS (\`/proc/PID/status\` VmRSS, summed over the
  proxy's processes) once all N requests are held at once and RSS stopped
  moving, minus the settled RSS before the load, divided by N.
- Details: bench/README.md.
EOF
} >"$OUT"

FAILED=()
# run TITLE COMMAND...: runs one benchmark, its tables appended to the
# report (FENCE=1: its output is plain text, kept as it is).
run() {
	local title=$1 rc=0
	shift
	log "=== $title: $*"
	{
		echo
		echo "## $title"
		echo
		echo "\`$*\`"
		[[ ${FENCE:-0} == 1 ]] && printf '\n```\n'
	} >>"$OUT"
	"$@" >>"$OUT" || rc=$?
	[[ ${FENCE:-0} == 1 ]] && echo '```' >>"$OUT"
	if ((rc)); then
		printf '\n**failed** (exit %d)\n' "$rc" >>"$OUT"
		FAILED+=("$title")
	fi
}

# note TITLE TEXT: a benchmark left out, and why.
note() {
	log "=== $1: $2"
	printf '\n## %s\n\nnot measured: %s\n' "$1" "$2" >>"$OUT"
}

run "HTTP/1.1 throughput, one core" "$BENCH/proxy.sh"
run "HTTP/1.1, a new connection per request, one core" "$BENCH/close.sh"
run "HTTP/2 over TLS, one core" "$BENCH/h2.sh"
run "Scaling: two workers on two cores" "$BENCH/scale.sh"
first=1
prev=0
for n in $INFLIGHT_COUNTS; do
	if [[ $(ulimit -Hn) != unlimited ]] && ((2 * n + 200 > $(ulimit -Hn))); then
		# The most this machine allows, in hundreds, when that is still
		# more than the counts before it.
		fit=$((($(ulimit -Hn) - 200) / 200 * 100))
		note "Memory per request in flight ($n)" \
			"a proxy needs about $((2 * n + 200)) file descriptors; the hard limit here is $(ulimit -Hn)$( ((fit > prev)) && echo "; $fit, the most it allows, is measured instead")"
		((fit > prev)) || continue
		n=$fit
	fi
	prev=$n
	# The backend's delay grows with N, so all N are in flight before the
	# first answer; the held-through-a-wake part runs once, with the first N.
	delay=$((n * 3 / 2))
	((delay < 6000)) && delay=6000
	held=0
	((first)) && held=$HELD
	first=0
	title="Memory per request in flight ($n)"
	((held)) && title+=" and held through one wake ($held)"
	run "$title" env DELAY_MS="${DELAY_MS:-$delay}" "$BENCH/inflight.sh" "$n" "$held"
done
run "Idle memory with 100 routes" "$BENCH/idle.sh" 100
if ((DROWSY_GIVEN)); then
	echo >>"$OUT"
	echo "Note: the wake overhead below is drowsy built from this tree ($(DROWSY_GIVEN=0 drowsy_rev)), not DROWSY_BIN." >>"$OUT"
fi
FENCE=1 run "Wake overhead, boot times spread over 50-2000 ms" "$BENCH/wake.sh" overhead "$WAKES" 50-2000

{
	echo
	echo "---"
	echo "run took $((($(date +%s) - started) / 60)) min; finished $(date -u +%Y-%m-%dT%H:%MZ)"
} >>"$OUT"
echo
cat "$OUT"
echo
log "report saved to $OUT"
if ((${#FAILED[@]})); then
	log "failed: ${FAILED[*]}"
	exit 1
fi
