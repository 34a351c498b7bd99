#!/usr/bin/env bash
# Proxy throughput: drowsy vs nginx, side by side in one run.
#
# Both proxies forward to the same backend (an nginx instance answering
# `200 ok\n`), each pinned to PROXY_CPU with one worker; wrk and the backend
# share CLIENT_CPU. Rounds alternate between the proxies (and alternate which
# one goes first), and the table shows the median over rounds.
#
# Everything listens on 127.0.0.1 only and every run is bounded by DURATION.
# See bench/README.md for the method and the latest figures.
#
# Environment (defaults in brackets):
#   ROUNDS [5]        measured rounds; each round runs both proxies once
#   DURATION [10s]    length of one wrk run
#   WARMUP [3s]       unmeasured run per proxy before the rounds (0 to skip)
#   CONNECTIONS [64]  wrk keep-alive connections
#   THREADS [1]       wrk threads
#   PROXY_CPU [0]     core for the proxy under test
#   CLIENT_CPU [1]    core for wrk and the backend
#   BASE_PORT [18080] drowsy on BASE_PORT, backend +1, nginx proxy +2
#   SKIP_BUILD [0]    1: use the existing target/release/drowsy
#   KEEP_WORKDIR [0]  1: keep configs, logs and raw wrk output
#
# Quick run: ROUNDS=1 DURATION=3s WARMUP=1s bench/proxy.sh

set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PROXY_CPU=${PROXY_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-18080}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}

DROWSY_PORT=$BASE_PORT
BACKEND_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
HOST_HEADER=bench.local

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DROWSY_BIN=$ROOT/target/release/drowsy

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- tools

install_tools() {
	local missing=()
	command -v wrk >/dev/null || missing+=(wrk)
	command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
	if ((${#missing[@]})); then
		log "installing ${missing[*]} from Debian packages"
		apt-get update
		apt-get install -y --no-install-recommends "${missing[@]}"
	fi
	command -v taskset >/dev/null || die "taskset (util-linux) is missing"
	command -v curl >/dev/null || die "curl is missing"
}

nginx_bin() {
	command -v nginx || echo /usr/sbin/nginx
}

# ---------------------------------------------------------------- processes

WORKDIR=
PIDS=()

cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ -n $WORKDIR && -d $WORKDIR ]]; then
		if [[ $KEEP_WORKDIR == 1 ]]; then
			log "kept $WORKDIR"
		else
			rm -rf "$WORKDIR"
		fi
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until 127.0.0.1:$1 answers `ok` for Host $HOST_HEADER.
wait_ready() {
	local port=$1 name=$2 pid=$3 i
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || die "$name exited at startup (see $WORKDIR)"
		if [[ $(curl -fsS --max-time 1 -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/" 2>/dev/null) == ok ]]; then
			return 0
		fi
		sleep 0.1
	done
	die "$name did not answer on 127.0.0.1:$port"
}

# The worker process of an nginx master (the one that does the work).
nginx_worker() {
	local master=$1 i child
	for ((i = 0; i < 50; i++)); do
		child=$(pgrep -P "$master" | head -n1 || true)
		[[ -n $child ]] && { echo "$child"; return 0; }
		sleep 0.1
	done
	die "nginx master $master has no worker"
}

write_nginx_conf() {
	# $1: file, $2: name, $3: http server block(s)
	local dir=$WORKDIR/$2
	mkdir -p "$dir/tmp"
	cat >"$1" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    default_type text/plain;
    # hyper keeps client and backend connections open indefinitely; nginx
    # would close them every 1000 requests by default.
    keepalive_requests 100000000;
    keepalive_timeout 75s;
$3
}
EOF
}

start_backend() {
	local conf=$WORKDIR/backend.conf
	write_nginx_conf "$conf" backend "
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / {
            return 200 \"ok\\n\";
        }
    }"
	taskset -c "$CLIENT_CPU" "$(nginx_bin)" -p "$WORKDIR/backend" -c "$conf" \
		>"$WORKDIR/backend.out" 2>&1 &
	PIDS+=($!)
	BACKEND_PID=$!
}

start_nginx_proxy() {
	local conf=$WORKDIR/nginx-proxy.conf
	# Same request rewriting as drowsy: Host kept, X-Forwarded-* set,
	# hop-by-hop headers dropped, HTTP/1.1 with pooled backend connections.
	write_nginx_conf "$conf" nginx-proxy "
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 256;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        server_name $HOST_HEADER;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }"
	taskset -c "$PROXY_CPU" "$(nginx_bin)" -p "$WORKDIR/nginx-proxy" -c "$conf" \
		>"$WORKDIR/nginx-proxy.out" 2>&1 &
	PIDS+=($!)
	NGINX_PID=$!
}

start_drowsy() {
	local conf=$WORKDIR/drowsy.yml
	cat >"$conf" <<EOF
listen:
  http: 127.0.0.1:$DROWSY_PORT
  admin: off
routes:
  bench:
    host: $HOST_HEADER
    backend: http://127.0.0.1:$BACKEND_PORT
EOF
	# --log-level warn: the access log (info, target drowsy::access) is off,
	# as nginx runs with access_log off.
	TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" "$DROWSY_BIN" run \
		--config "$conf" --log-level warn >"$WORKDIR/drowsy.out" 2>&1 &
	PIDS+=($!)
	DROWSY_PID=$!
}

# ---------------------------------------------------------------- measuring

# Busy jiffies and total jiffies of one core, from /proc/stat.
cpu_sample() {
	awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# Converts a wrk latency (e.g. 812.00us, 1.52ms, 1.01s) to milliseconds.
to_ms() {
	awk -v v="$1" 'BEGIN {
		n = v + 0
		if (v ~ /us$/) n /= 1000
		else if (v ~ /ms$/) n = n
		else if (v ~ /m$/) n *= 60000
		else if (v ~ /s$/) n *= 1000
		printf "%.3f\n", n
	}'
}

# CPU time (user + system, in clock ticks) used so far by process $1, all
# its threads included.
proc_ticks() {
	sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# Runs wrk against the proxy on port $1 (whose working process is $4);
# prints "rps p99_ms core_busy_pct client_busy_pct proxy_cpu_us_per_request
# proxy_cpu_pct" (the proxy's own share of its core, next to the core's total
# busy time: the difference is other work on that core).
run_wrk() {
	local port=$1 duration=$2 out=$3 pid=$4 p0 c0 p1 c1 t0 t1 rps p99 reqs
	t0=$(proc_ticks "$pid")
	read -r p0 c0 < <(cpu_sample "$PROXY_CPU")
	read -r p1 c1 < <(cpu_sample "$CLIENT_CPU")
	taskset -c "$CLIENT_CPU" wrk -t "$THREADS" -c "$CONNECTIONS" -d "$duration" \
		--latency -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/" >"$out"
	local q0 d0 q1 d1
	read -r q0 d0 < <(cpu_sample "$PROXY_CPU")
	read -r q1 d1 < <(cpu_sample "$CLIENT_CPU")
	t1=$(proc_ticks "$pid")
	if grep -Eq 'Non-2xx|Socket errors' "$out"; then
		log "wrk reported errors against port $port:"
		grep -E 'Non-2xx|Socket errors' "$out" >&2
		ERRORS=1
	fi
	rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
	p99=$(awk '$1 == "99%" { print $2 }' "$out")
	reqs=$(awk '/ requests in / { print $1 }' "$out")
	[[ -n $rps && -n $p99 && -n $reqs ]] || die "cannot read wrk output $out"
	printf '%s %s %s %s %s %s\n' "$rps" "$(to_ms "$p99")" \
		"$(awk -v b=$((q0 - p0)) -v t=$((d0 - c0)) 'BEGIN { printf "%.0f", t ? 100 * b / t : 0 }')" \
		"$(awk -v b=$((q1 - p1)) -v t=$((d1 - c1)) 'BEGIN { printf "%.0f", t ? 100 * b / t : 0 }')" \
		"$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", n ? t * 1e6 / hz / n : 0 }')" \
		"$(awk -v t=$((t1 - t0)) -v j=$((d0 - c0)) 'BEGIN { printf "%.0f", j ? 100 * t / j : 0 }')"
}

median() {
	sort -g | awk '{ v[NR] = $1 } END {
		if (NR == 0) exit 1
		if (NR % 2) print v[(NR + 1) / 2]
		else print (v[NR / 2] + v[NR / 2 + 1]) / 2
	}'
}

# Medians of columns 3.. of the results lines for proxy $1, space-separated.
medians() {
	local col out=()
	for col in 3 4 5 6 7 8; do
		out+=("$(awk -v p="$1" -v c="$col" '$1 == p { print $c }' "$2" | median)")
	done
	echo "${out[*]}"
}

# ---------------------------------------------------------------- main

main() {
	[[ $(nproc --all) -ge 2 ]] || log "warning: fewer than 2 cores; proxy and client will compete"
	install_tools
	if [[ $SKIP_BUILD != 1 ]]; then
		log "building drowsy (release)"
		(cd "$ROOT" && cargo build --release --quiet)
	fi
	[[ -x $DROWSY_BIN ]] || die "$DROWSY_BIN not found"

	WORKDIR=$(mktemp -d /tmp/drowsy-bench.XXXXXX)
	ERRORS=0
	BUSY=0
	CLK_TCK=$(getconf CLK_TCK)
	start_backend
	wait_ready "$BACKEND_PORT" backend "$BACKEND_PID"
	start_nginx_proxy
	wait_ready "$NGINX_PORT" "nginx proxy" "$NGINX_PID"
	start_drowsy
	wait_ready "$DROWSY_PORT" drowsy "$DROWSY_PID"
	NGINX_WORKER=$(nginx_worker "$NGINX_PID")

	log "wrk: $THREADS thread(s), $CONNECTIONS connections, $DURATION per run, $ROUNDS round(s)"
	log "proxies on core $PROXY_CPU; wrk and backend on core $CLIENT_CPU"
	if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
		log "warm-up ($WARMUP each)"
		run_wrk "$NGINX_PORT" "$WARMUP" "$WORKDIR/warmup-nginx.txt" "$NGINX_WORKER" >/dev/null
		run_wrk "$DROWSY_PORT" "$WARMUP" "$WORKDIR/warmup-drowsy.txt" "$DROWSY_PID" >/dev/null
	fi

	local results=$WORKDIR/results.txt round name port pid
	: >"$results"
	for ((round = 1; round <= ROUNDS; round++)); do
		local order=(nginx drowsy)
		((round % 2 == 0)) && order=(drowsy nginx)
		for name in "${order[@]}"; do
			if [[ $name == nginx ]]; then
				port=$NGINX_PORT pid=$NGINX_WORKER
			else
				port=$DROWSY_PORT pid=$DROWSY_PID
			fi
			local line
			line=$(run_wrk "$port" "$DURATION" "$WORKDIR/round$round-$name.txt" "$pid")
			echo "$name $round $line" >>"$results"
			# shellcheck disable=SC2086 # split the measured fields
			set -- $line
			log "$(printf 'round %d %-6s %8.0f req/s  p99 %7.3f ms  %6.2f us CPU/req  proxy %3s%%  core%s %3s%%  core%s %3s%%' \
				"$round" "$name" "$1" "$2" "$5" "$6" "$PROXY_CPU" "$3" "$CLIENT_CPU" "$4")"
			if (($3 - $6 > 10)); then
				log "  note: other processes used core $PROXY_CPU during this run ($3% busy, proxy $6%)"
				BUSY=1
			fi
		done
	done

	# Medians per proxy of: req/s, p99 (ms), proxy-core busy %, client-core
	# busy %, proxy CPU time per request (us), proxy's own CPU %.
	local n d
	read -r -a n < <(medians nginx "$results")
	read -r -a d < <(medians drowsy "$results")

	echo
	echo "Proxy throughput, median of $ROUNDS round(s) x $DURATION, wrk -t$THREADS -c$CONNECTIONS, keep-alive HTTP/1.1"
	echo
	printf '| %-12s | %9s | %8s | %10s | %9s | %11s | %11s |\n' proxy "req/s" "p99 (ms)" \
		"CPU us/req" "proxy CPU" "core $PROXY_CPU busy" "core $CLIENT_CPU busy"
	echo "|--------------|----------:|---------:|-----------:|----------:|------------:|------------:|"
	printf '| %-12s | %9.0f | %8.2f | %10.2f | %8s%% | %10s%% | %10s%% |\n' \
		nginx "${n[0]}" "${n[1]}" "${n[4]}" "${n[5]}" "${n[2]}" "${n[3]}"
	printf '| %-12s | %9.0f | %8.2f | %10.2f | %8s%% | %10s%% | %10s%% |\n' \
		drowsy "${d[0]}" "${d[1]}" "${d[4]}" "${d[5]}" "${d[2]}" "${d[3]}"
	awk -v a="${d[0]}" -v b="${n[0]}" -v c="${d[1]}" -v e="${n[1]}" -v f="${d[4]}" -v g="${n[4]}" 'BEGIN {
		printf "| %-12s | %8.2fx | %7.2fx | %9.2fx | %9s | %11s | %11s |\n", "drowsy/nginx", a / b, c / e, f / g, "", "", ""
		printf "\ntarget: req/s >= 1.00x: %s; p99 <= 1.20x: %s\n",
			(a / b >= 1.0 ? "met" : "MISSED"), (c / e <= 1.2 ? "met" : "MISSED")
	}'
	if ((BUSY)); then
		log "other processes competed for core $PROXY_CPU in some runs: req/s and p99 are"
		log "depressed and noisy there; CPU us/req is the steadier comparison"
	fi
	if ((ERRORS)); then
		die "wrk saw errors or non-2xx responses; figures are not valid"
	fi
}

main "$@"
