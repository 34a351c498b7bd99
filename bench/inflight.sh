#!/usr/bin/env bash
# Memory per request in flight: drowsy against nginx (and other peers), side
# by side in one run.
#
#   bench/inflight.sh [N=2000]
#
# A backend (examples/inflight_bench.rs, `backend` mode) answers every
# request after DELAY_MS. For each proxy, a fresh process (one worker,
# pinned to PROXY_CPU) gets N connections, each with one GET; once the
# backend holds all N at once, the proxy's RSS (nginx: master + worker) is
# read when it stops moving. Growth over the idle RSS, divided by N, is the
# memory one request in flight costs. Rounds rotate through the proxies;
# the table shows medians. Loopback only; every wait is bounded.
#
# The case of N requests held through a wake is `bench/wake.sh held N`.
#
# Environment (defaults in brackets):
#   ROUNDS [3]        fresh-process runs per proxy
#   DELAY_MS [6000]   the backend's answer delay (raise it if not all N get
#                     in flight before the first answers come back)
#   PEERS [nginx]     peers beside drowsy (haproxy, traefik, caddy work too)
#   PROXY_CPU [0]     core for the proxy; CLIENT_CPU [1] for load and backend
#   BASE_PORT [18280] backend on BASE_PORT+1, proxies from BASE_PORT+10
#   SKIP_BUILD, KEEP_WORKDIR, BENCH_CACHE: see bench/lib.sh

set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${1:-${N:-2000}}
ROUNDS=${ROUNDS:-3}
DELAY_MS=${DELAY_MS:-6000}
PEERS=${PEERS-nginx}
PROXY_CPU=${PROXY_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-18280}
BACKEND_PORT=$((BASE_PORT + 1))
EXAMPLE=$ROOT/target/release/examples/inflight_bench

main() {
	bench_init inflight
	need_base_tools
	NGINX_BIN=$(sbin nginx)
	build_drowsy
	if [[ $SKIP_BUILD != 1 || ! -x $EXAMPLE ]]; then
		log "building examples/inflight_bench (release)"
		(cd "$ROOT" && cargo build --release --quiet --example inflight_bench)
	fi
	local names=(drowsy) name
	for name in $PEERS; do
		ensure_peer "$name" && names+=("$name")
	done
	((${#names[@]} >= 2)) || die "nothing to compare drowsy with (PEERS='$PEERS')"
	check_quiet
	local fds
	fds=$(ulimit -n)
	((fds > 2 * N + 200)) || log "warning: ulimit -n is $fds; $N requests in flight need about $((2 * N + 200))"

	start_bg "$CLIENT_CPU" "$WORKDIR/backend.out" -- "$EXAMPLE" backend "127.0.0.1:$BACKEND_PORT" "$DELAY_MS"
	wait_ready http "$BACKEND_PORT" "slow backend" "$BG_PID"

	log "$N requests in flight, backend answers after $DELAY_MS ms; proxies on core $PROXY_CPU (1 worker), $ROUNDS round(s)"
	local results=$WORKDIR/results.txt round k i n=${#names[@]} port out pids
	: >"$results"
	for ((round = 1; round <= ROUNDS; round++)); do
		for ((k = 0; k < n; k++)); do
			i=$(((k + round - 1) % n))
			name=${names[i]}
			port=$((BASE_PORT + 10 + i))
			start_proxy "$name" http "$port" "$BACKEND_PORT" 1 "$PROXY_CPU" "$N"
			pids=$(proc_tree "$PROXY_PID")
			out=$WORKDIR/round$round-$name.txt
			taskset -c "$CLIENT_CPU" timeout $((DELAY_MS / 1000 + 120)) "$EXAMPLE" load \
				"127.0.0.1:$port" "127.0.0.1:$BACKEND_PORT" "$N" "$(echo "$pids" | xargs | tr ' ' ,)" "$HOST_HEADER" \
				>"$out" 2>"$out.err" || { cat "$out.err" >&2; die "the load against $name failed"; }
			stop_bg "$PROXY_PID"
			local line
			line=$(grep '^RESULT ' "$out") || die "no result from the load against $name"
			declare -A r=()
			local kv
			for kv in ${line#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
			if ((r[ok] != N)); then
				log "$name: only ${r[ok]} of $N answered 200 ($(cat "$out.err"))"
				ERRORS=1
			fi
			if ((r[held_kib] == 0)); then
				log "$name: not all $N requests were in flight at once (max ${r[max_held]}); raise DELAY_MS"
				ERRORS=1
			fi
			echo "$name ${r[baseline_kib]} ${r[held_kib]} ${r[per_held_b]} ${r[peak_kib]} ${r[per_peak_b]} ${r[ok]} ${r[all_held_ms]}" >>"$results"
			log "$(printf 'round %d %-8s idle %6d KiB  %d in flight %7d KiB  %6.0f B/request  peak %7d KiB  (all held after %s ms)' \
				"$round" "$name" "${r[baseline_kib]}" "$N" "${r[held_kib]}" "${r[per_held_b]}" "${r[peak_kib]}" "${r[all_held_ms]}")"
			unset r
		done
	done

	echo
	echo "### Memory per request in flight"
	echo
	echo "$N requests in flight at once through one plain route, backend answering after $DELAY_MS ms;"
	echo "one worker per proxy, a fresh process per run; median of $ROUNDS run(s); $(date -u +%Y-%m-%dT%H:%MZ)"
	load_note
	versions_line "${names[@]}"
	echo
	echo "| proxy    | RSS idle (KiB) | RSS in flight (KiB) | per request in flight | peak RSS (KiB) | peak per request |"
	echo "|----------|---------------:|--------------------:|----------------------:|---------------:|-----------------:|"
	local -A per
	for name in "${names[@]}"; do
		local m=() col
		for col in 2 3 4 5 6; do
			m+=("$(awk -v p="$name" -v c="$col" '$1 == p { print $c }' "$results" | median)")
		done
		per[$name]=${m[2]}
		printf '| %-8s | %14.0f | %19.0f | %17.1f KiB | %14.0f | %12.1f KiB |\n' \
			"$name" "${m[0]}" "${m[1]}" "$(awk -v b="${m[2]}" 'BEGIN { print b / 1024 }')" \
			"${m[3]}" "$(awk -v b="${m[4]}" 'BEGIN { print b / 1024 }')"
	done
	echo
	for name in "${names[@]}"; do
		[[ $name == drowsy ]] && continue
		awk -v a="${per[drowsy]}" -v b="${per[$name]}" -v p="$name" 'BEGIN {
			printf "drowsy / %s, memory per request in flight: %.2fx (target <= 1.00x: %s)\n", p, a / b, (a <= b ? "met" : "MISSED") }'
	done
	((ERRORS)) && die "some runs were not valid (see above)"
	return 0
}

ERRORS=0
main "$@"
