#!/usr/bin/env bash
# Proxy throughput: drowsy against nginx, HAProxy, Traefik 3 and Caddy 2,
# side by side in one run, on the same backend and client.
#
# Every proxy forwards to the same backend (an nginx answering `200 ok\n`)
# with keep-alive backend connections, X-Forwarded-For/-Proto/-Host and no
# access log; each is pinned to PROXY_CPU with WORKERS workers; the client
# and the backend share CLIENT_CPU. Rounds rotate through the proxies (each
# round starts with the next one), and the tables show medians over rounds
# and drowsy's ratio to each peer.
#
#   MODE=http  (default) HTTP/1.1 keep-alive, wrk -t1 -c64
#   MODE=close HTTP/1.1 with a new connection for every request (wrk sends
#              `Connection: close`): the cost of accepting and closing
#   MODE=h2    HTTP/2 over TLS 1.3 (self-signed ECDSA P-256 certificate),
#              h2load -c16 -m16; every proxy speaks HTTP/1.1 to the backend
#
# Everything listens on 127.0.0.1 only and every run is bounded by DURATION.
# bench/scale.sh runs this with two workers; bench/README.md has the method.
#
# Environment (defaults in brackets):
#   MODE [http]          http, close or h2
#   PEERS [nginx haproxy traefik caddy]  peers to run beside drowsy; a peer
#                        that cannot be installed is left out with a message
#   WORKERS [1]          workers per proxy (drowsy TOKIO_WORKER_THREADS, nginx
#                        worker_processes, HAProxy nbthread, Go GOMAXPROCS)
#   TITLE                the tables' heading
#   ENTRIES              instead of PEERS/WORKERS: NAME:WORKERS list, e.g.
#                        "drowsy:1 nginx:1 drowsy:2 nginx:2" (bench/scale.sh)
#   ROUNDS [5]           measured rounds; each round runs every proxy once
#   DURATION [10s]       length of one client run
#   WARMUP [3s]          unmeasured run per proxy before the rounds (0 to skip)
#   CONNECTIONS [64 http, 16 h2]   client connections
#   STREAMS [16]         h2: concurrent streams per connection (h2load -m)
#   THREADS [1]          client threads
#   TLS13_CIPHER [TLS_AES_128_GCM_SHA256]  h2: the one TLS 1.3 suite offered
#   PROXY_CPU [0]        cores for the proxy under test (taskset list)
#   CLIENT_CPU [1]       cores for the client
#   BACKEND_CPU [CLIENT_CPU]  cores for the backend
#   BACKEND_WORKERS [1]  backend nginx worker_processes
#   BASE_PORT [18080]    backend on BASE_PORT+1, proxies from BASE_PORT+10
#   SKIP_BUILD [0]       1: use the existing target/release/drowsy
#   KEEP_WORKDIR [0]     1: keep configs, logs and raw client output
#
# Quick run: ROUNDS=1 DURATION=3s WARMUP=1s bench/proxy.sh

set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODE=${MODE:-http}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
if [[ $MODE == h2 ]]; then
	CONNECTIONS=${CONNECTIONS:-16}
else
	CONNECTIONS=${CONNECTIONS:-64}
fi
STREAMS=${STREAMS:-16}
THREADS=${THREADS:-1}
TLS13_CIPHER=${TLS13_CIPHER:-TLS_AES_128_GCM_SHA256}
WORKERS=${WORKERS:-1}
PEERS=${PEERS-${ALL_PEERS[*]}}
PROXY_CPU=${PROXY_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BACKEND_CPU=${BACKEND_CPU:-$CLIENT_CPU}
BACKEND_WORKERS=${BACKEND_WORKERS:-1}
BASE_PORT=${BASE_PORT:-18080}
BACKEND_PORT=$((BASE_PORT + 1))

case $MODE in
http | close) PROTO=http ;;
h2) PROTO=https ;;
*) die "MODE must be http, close or h2" ;;
esac

# ---------------------------------------------------------------- entries

# One entry per proxy process measured: E_NAME, E_WORKERS, E_PORT, E_PID,
# E_LABEL (the name, with the worker count when counts differ).
E_NAME=() E_WORKERS=() E_PORT=() E_PID=() E_LABEL=()
# Peers that could not be installed (left out, named under the tables).
SKIPPED=()

plan_entries() {
	local spec=() e name w mixed=0 i
	if [[ -n ${ENTRIES:-} ]]; then
		read -r -a spec <<<"$ENTRIES"
	else
		spec=("drowsy:$WORKERS")
		for name in $PEERS; do spec+=("$name:$WORKERS"); done
	fi
	for e in "${spec[@]}"; do
		name=${e%%:*} w=${e#*:}
		[[ $name == "$e" ]] && w=$WORKERS
		if [[ $name != drowsy ]] && ! ensure_peer "$name"; then
			SKIPPED+=("$name")
			continue
		fi
		E_NAME+=("$name") E_WORKERS+=("$w")
	done
	for ((i = 1; i < ${#E_WORKERS[@]}; i++)); do
		[[ ${E_WORKERS[i]} != "${E_WORKERS[0]}" ]] && mixed=1
	done
	for ((i = 0; i < ${#E_NAME[@]}; i++)); do
		E_PORT+=($((BASE_PORT + 10 + i)))
		if ((mixed)); then
			E_LABEL+=("${E_NAME[i]} ${E_WORKERS[i]}w")
		else
			E_LABEL+=("${E_NAME[i]}")
		fi
	done
	((${#E_NAME[@]} >= 2)) || die "nothing to compare drowsy with (PEERS='$PEERS')"
}

# ---------------------------------------------------------------- measuring

# Converts a wrk latency (812.00us, 1.52ms, 1.01s) to milliseconds.
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

# Runs the client once; sets RPS, P99 (ms), REQS; flags errors. Extra
# arguments go to wrk.
client_http() {
	local port=$1 duration=$2 out=$3
	shift 3
	taskset -c "$CLIENT_CPU" wrk -t "$THREADS" -c "$CONNECTIONS" -d "$duration" \
		--latency -H "Host: $HOST_HEADER" "$@" "http://127.0.0.1:$port/" >"$out"
	if grep -Eq 'Non-2xx|Socket errors' "$out"; then
		log "wrk reported errors against port $port:"
		grep -E 'Non-2xx|Socket errors' "$out" >&2
		ERRORS=1
	fi
	RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
	P99=$(awk '$1 == "99%" { print $2 }' "$out")
	REQS=$(awk '/ requests in / { print $1 }' "$out")
	[[ -n $RPS && -n $P99 && -n $REQS ]] || die "cannot read wrk output $out"
	P99=$(to_ms "$P99")
}

client_close() {
	client_http "$@" -H "Connection: close"
}

client_h2() {
	local port=$1 duration=$2 out=$3
	taskset -c "$CLIENT_CPU" h2load -c "$CONNECTIONS" -m "$STREAMS" -t "$THREADS" -D "$duration" \
		--tls13-ciphers="$TLS13_CIPHER" --connect-to="127.0.0.1:$port" \
		--log-file="$out.times" "https://$HOST_HEADER:$port/" >"$out"
	local failed errored non2xx proto
	read -r failed errored < <(awk '/^requests:/ { print $10, $12 }' "$out")
	non2xx=$(awk '/^status codes:/ { print $5 + $7 + $9 }' "$out")
	proto=$(awk '/^Application protocol:/ { print $3 }' "$out")
	if [[ $proto != h2 ]]; then
		log "h2load against port $port did not negotiate h2 (got '${proto:-nothing}')"
		ERRORS=1
	fi
	if [[ ${failed:-x} != 0 || ${errored:-x} != 0 || ${non2xx:-x} != 0 ]]; then
		log "h2load reported errors against port $port: $(grep -E '^(requests|status codes):' "$out" | tr '\n' ' ')"
		ERRORS=1
	fi
	RPS=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$out")
	REQS=$(awk '/^requests:/ { print $8 }' "$out")
	# p99 of the per-request times h2load logs (microseconds, third column).
	P99=$(awk -F'\t' '$2 >= 200 && $2 < 300 { print $3 }' "$out.times" | sort -n |
		awk '{ v[NR] = $1 } END { if (NR) { i = int(0.99 * NR + 0.5); if (i < 1) i = 1; printf "%.3f", v[i] / 1000 } }')
	rm -f "$out.times"
	[[ -n $RPS && -n $P99 && -n $REQS ]] || die "cannot read h2load output $out"
}

# Runs the client against entry $1; prints "rps p99_ms proxy_cores_busy_pct
# client_cores_busy_pct proxy_cpu_us_per_request proxy_cpu_pct" (the
# proxy's own share of its cores, next to their total busy time: the
# difference is other work on those cores).
run_load() {
	local i=$1 duration=$2 out=$3 pids t0 t1 p0 c0 p1 c1 q0 d0 q1 d1
	read -r -a pids <<<"$(proc_tree "${E_PID[i]}")"
	t0=$(proc_ticks "${pids[@]}")
	read -r p0 c0 < <(cpu_sample "$PROXY_CPU")
	read -r p1 c1 < <(cpu_sample "$CLIENT_CPU")
	"client_$MODE" "${E_PORT[i]}" "$duration" "$out"
	read -r q0 d0 < <(cpu_sample "$PROXY_CPU")
	read -r q1 d1 < <(cpu_sample "$CLIENT_CPU")
	t1=$(proc_ticks "${pids[@]}")
	awk -v rps="$RPS" -v p99="$P99" -v bp=$((q0 - p0)) -v tp=$((d0 - c0)) \
		-v bc=$((q1 - p1)) -v tc=$((d1 - c1)) -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$REQS" 'BEGIN {
		printf "%s %s %.0f %.0f %.2f %.0f\n", rps, p99, tp ? 100 * bp / tp : 0, tc ? 100 * bc / tc : 0,
			n ? t * 1e6 / hz / n : 0, tp ? 100 * t / tp : 0
	}'
}

# Medians of columns 3.. of the results lines for label $1.
medians() {
	local col vals=()
	for col in 3 4 5 6 7 8; do
		vals+=("$(awk -F'|' -v p="$1" -v c="$col" '$1 == p { print $c }' "$2" | median)")
	done
	echo "${vals[*]}"
}

# ---------------------------------------------------------------- main

main() {
	[[ $(nproc --all) -ge 2 ]] || log "warning: fewer than 2 cores; proxy and client will compete"
	bench_init "proxy-$MODE"
	need_base_tools
	NGINX_BIN=$(sbin nginx)
	if [[ $MODE == h2 ]]; then need_cmd h2load nghttp2-client; else need_cmd wrk wrk; fi
	build_drowsy
	plan_entries
	check_quiet

	ERRORS=0
	BUSY=0
	start_backend "$BACKEND_PORT" "$BACKEND_WORKERS" "$BACKEND_CPU"
	local i n=${#E_NAME[@]}
	for ((i = 0; i < n; i++)); do
		start_proxy "${E_NAME[i]}" "$PROTO" "${E_PORT[i]}" "$BACKEND_PORT" "${E_WORKERS[i]}" "$PROXY_CPU"
		E_PID+=("$PROXY_PID")
	done

	local client
	if [[ $MODE == h2 ]]; then
		client="h2load -t$THREADS -c$CONNECTIONS -m$STREAMS, HTTP/2 over TLS 1.3 ($TLS13_CIPHER), HTTP/1.1 to the backend"
	elif [[ $MODE == close ]]; then
		client="wrk -t$THREADS -c$CONNECTIONS, HTTP/1.1, a new connection per request (Connection: close)"
	else
		client="wrk -t$THREADS -c$CONNECTIONS, keep-alive HTTP/1.1"
	fi
	log "$client; $DURATION per run, $ROUNDS round(s)"
	log "proxies on core(s) $PROXY_CPU; client on $CLIENT_CPU; backend on $BACKEND_CPU ($BACKEND_WORKERS worker(s))"
	if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
		log "warm-up ($WARMUP each)"
		for ((i = 0; i < n; i++)); do
			run_load "$i" "$WARMUP" "$WORKDIR/warmup-$i.txt" >/dev/null
		done
	fi

	local results=$WORKDIR/results.txt round k line
	: >"$results"
	for ((round = 1; round <= ROUNDS; round++)); do
		for ((k = 0; k < n; k++)); do
			i=$(((k + round - 1) % n))
			line=$(run_load "$i" "$DURATION" "$WORKDIR/round$round-$i.txt")
			echo "${E_LABEL[i]}|$round|${line// /|}" >>"$results"
			# shellcheck disable=SC2086 # split the measured fields
			set -- $line
			log "$(printf 'round %d %-10s %8.0f req/s  p99 %7.3f ms  %6.2f us CPU/req  proxy %3s%%  cores %s %3s%%  cores %s %3s%%' \
				"$round" "${E_LABEL[i]}" "$1" "$2" "$5" "$6" "$PROXY_CPU" "$3" "$CLIENT_CPU" "$4")"
			if ! cpus_overlap "$PROXY_CPU" "$CLIENT_CPU" && (($3 - $6 > 10)); then
				log "  note: other processes used core(s) $PROXY_CPU during this run ($3% busy, proxy $6%)"
				BUSY=1
			fi
		done
	done

	print_tables "$results" "$client"
	if ((BUSY)); then
		log "other processes competed for core(s) $PROXY_CPU in some runs: req/s and p99 are"
		log "depressed and noisy there; CPU us/req is the steadier comparison"
	fi
	((ERRORS)) && die "the client saw errors or non-2xx responses; figures are not valid"
	return 0
}

print_tables() {
	local results=$1 client=$2 i j n=${#E_NAME[@]}
	local -A M
	for ((i = 0; i < n; i++)); do
		M[$i]=$(medians "${E_LABEL[i]}" "$results")
	done

	local title=${TITLE:-Proxy throughput}
	[[ $MODE == h2 ]] && title=${TITLE:-Proxy throughput, HTTP/2 over TLS}
	[[ $MODE == close ]] && title=${TITLE:-Proxy throughput, a new connection per request}
	echo
	echo "### $title"
	echo
	local workers="$WORKERS worker(s) each"
	[[ -n ${ENTRIES:-} ]] && workers="the workers shown (w)"
	echo "median of $ROUNDS round(s) x $DURATION; $client; proxies on core(s) $PROXY_CPU with $workers,"
	echo "client on $CLIENT_CPU, backend on $BACKEND_CPU; $(date -u +%Y-%m-%dT%H:%MZ)"
	load_note
	versions_line "${E_NAME[@]}"
	((${#SKIPPED[@]})) && echo "left out (could not be installed, see the log): ${SKIPPED[*]}"
	if [[ $MODE == h2 ]]; then
		# What each proxy negotiated with h2load (the same for all, or a warning).
		local tls=() kinds
		for ((i = 0; i < n; i++)); do
			tls+=("$(awk '/^Application protocol:/ { p = $3 } /^TLS Protocol:/ { v = $3 } /^Cipher:/ { c = $2 }
				/^Server Temp Key:/ { k = $4 } END { print p, v, c, k }' "$WORKDIR/round1-$i.txt")")
		done
		kinds=$(printf '%s\n' "${tls[@]}" | sort -u)
		if [[ $(wc -l <<<"$kinds") == 1 ]]; then
			echo "negotiated by every proxy: $kinds"
		else
			echo "WARNING: the proxies negotiated different TLS parameters:"
			for ((i = 0; i < n; i++)); do echo "  ${E_LABEL[i]}: ${tls[i]}"; done
		fi
	fi
	echo
	printf '| %-10s | %9s | %8s | %10s | %9s | %16s | %17s |\n' proxy "req/s" "p99 (ms)" \
		"CPU us/req" "proxy CPU" "proxy cores busy" "client cores busy"
	echo "|------------|----------:|---------:|-----------:|----------:|-----------------:|------------------:|"
	for ((i = 0; i < n; i++)); do
		local m
		read -r -a m <<<"${M[$i]}"
		printf '| %-10s | %9.0f | %8.2f | %10.2f | %8s%% | %15s%% | %16s%% |\n' \
			"${E_LABEL[i]}" "${m[0]}" "${m[1]}" "${m[4]}" "${m[5]}" "${m[2]}" "${m[3]}"
	done

	# drowsy's ratio to every other entry with the same worker count.
	echo
	printf '| %-22s | %8s | %8s | %10s |\n' "ratio" "req/s" "p99" "CPU us/req"
	echo "|------------------------|---------:|---------:|-----------:|"
	for ((i = 0; i < n; i++)); do
		[[ ${E_NAME[i]} == drowsy ]] || continue
		for ((j = 0; j < n; j++)); do
			[[ ${E_NAME[j]} != drowsy && ${E_WORKERS[j]} == "${E_WORKERS[i]}" ]] || continue
			local d o
			read -r -a d <<<"${M[$i]}"
			read -r -a o <<<"${M[$j]}"
			awk -v l="${E_LABEL[i]} / ${E_LABEL[j]}" -v a="${d[0]}" -v b="${o[0]}" -v c="${d[1]}" -v e="${o[1]}" \
				-v f="${d[4]}" -v g="${o[4]}" 'BEGIN {
				printf "| %-22s | %7.2fx | %7.2fx | %9.2fx |\n", l, a / b, c / e, f / g }'
		done
	done

	# Scaling: the same proxy with more workers against its fewest.
	local lines=()
	for ((i = 0; i < n; i++)); do
		for ((j = 0; j < n; j++)); do
			[[ ${E_NAME[j]} == "${E_NAME[i]}" && ${E_WORKERS[j]} -gt ${E_WORKERS[i]} ]] || continue
			local a b
			read -r -a a <<<"${M[$j]}"
			read -r -a b <<<"${M[$i]}"
			lines+=("$(awk -v l="${E_LABEL[j]} / ${E_LABEL[i]}" -v x="${a[0]}" -v y="${b[0]}" \
				-v f="${a[4]}" -v g="${b[4]}" 'BEGIN {
				printf "| %-22s | %8.2fx | %10.2fx |", l, x / y, f / g }')")
		done
	done
	if ((${#lines[@]})); then
		echo
		printf '| %-22s | %9s | %11s |\n' scaling "req/s" "CPU us/req"
		echo "|------------------------|----------:|------------:|"
		printf '%s\n' "${lines[@]}"
	fi
	if [[ $MODE == http && ${E_NAME[0]} == drowsy ]]; then
		for ((j = 0; j < n; j++)); do
			[[ ${E_NAME[j]} == nginx && ${E_WORKERS[j]} == "${E_WORKERS[0]}" ]] || continue
			local d o
			read -r -a d <<<"${M[0]}"
			read -r -a o <<<"${M[$j]}"
			awk -v l="${E_LABEL[0]} / ${E_LABEL[j]}" -v a="${d[0]}" -v b="${o[0]}" -v f="${d[4]}" -v g="${o[4]}" 'BEGIN {
				printf "\ntarget %s: req/s >= 1.00x: %s; CPU us/req <= 1.00x: %s\n", l,
					(a / b >= 1.0 ? "met" : "MISSED"), (f / g <= 1.0 ? "met" : "MISSED") }'
		done
	fi
}

main "$@"
