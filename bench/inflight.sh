#!/usr/bin/env bash
# Memory per request in flight: drowsy against nginx (and other peers), side
# by side in one run; and drowsy holding requests through one wake of a
# simulated guest.
#
#   bench/inflight.sh [N=2000] [HELD=10000]
#
# In flight: a backend (examples/inflight_bench.rs, `backend` mode) answers
# every request after DELAY_MS. For each proxy, a fresh process (one worker,
# pinned to PROXY_CPU) gets N connections, each with one GET; once the
# backend holds all N at once, the proxy's RSS (nginx: master + worker) is
# read when it stops moving. Growth over the idle RSS, divided by N, is the
# memory one request in flight costs. Rounds rotate through the proxies;
# the table shows medians.
#
# Held through a wake: `drowsy sim` runs one stopped LXC guest that boots in
# BOOT_MS; a fresh drowsy (one worker, pinned to PROXY_CPU) routes to it with
# its idle gate. HELD connections each send one GET, paced by the gate's held
# count from the admin API; once all are held (before the guest is up), the
# RSS is read when it stops moving, as above. Then the guest wakes once and
# every request must be answered 200. Simulator and drowsy are fresh each
# round. HELD=0 skips this part, N=0 the other.
#
# Loopback only; every wait is bounded.
#
# Environment (defaults in brackets):
#   ROUNDS [3]        fresh-process runs per proxy and per part
#   DELAY_MS [6000]   the backend's answer delay (raise it if not all N get
#                     in flight before the first answers come back)
#   BOOT_MS [4000]    the simulated guest's boot time (raise it if not all
#                     HELD are held before it is up)
#   PEERS [nginx]     peers beside drowsy (haproxy, traefik, caddy work too)
#   PROXY_CPU [0]     core for the proxy; CLIENT_CPU [1] for load and backend
#   BASE_PORT [18280] backend on BASE_PORT+1, simulator +2, guest +3, the
#                     wake part's drowsy +4 (admin +5), proxies from +10
#   DROWSY_BIN, SKIP_BUILD, KEEP_WORKDIR, BENCH_CACHE: see bench/lib.sh

set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${1:-${N:-2000}}
HELD=${2:-${HELD:-10000}}
ROUNDS=${ROUNDS:-3}
DELAY_MS=${DELAY_MS:-6000}
BOOT_MS=${BOOT_MS:-4000}
PEERS=${PEERS-nginx}
PROXY_CPU=${PROXY_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-18280}
BACKEND_PORT=$((BASE_PORT + 1))
SIM_PORT=$((BASE_PORT + 2))
GUEST_PORT=$((BASE_PORT + 3))
WAKE_PORT=$((BASE_PORT + 4))
ADMIN_PORT=$((BASE_PORT + 5))
GUEST_VMID=105
EXAMPLE=$ROOT/target/release/examples/inflight_bench

# A proxy holding a request in flight has a client and a backend socket
# open; the held part's drowsy only the client one until the wake.
check_fds() {
	local need=$1 what=$2 hard
	hard=$(ulimit -Hn)
	[[ $hard == unlimited ]] && return 0
	((need <= hard)) || die "$what needs about $need file descriptors per process; the hard limit is $hard (lower the count)"
	((need <= $(ulimit -n))) || log "warning: ulimit -n is $(ulimit -n); $what needs about $need"
}

# Reads inflight_bench's RESULT line from $1 into the array R; flags runs
# where not every request was answered 200 or not all were held at once.
read_result() {
	local out=$1 name=$2 n=$3 line kv
	line=$(grep '^RESULT ' "$out") || die "no result from the load against $name (see $out.err)"
	R=()
	for kv in ${line#RESULT }; do R[${kv%%=*}]=${kv#*=}; done
	if ((R[ok] != n)); then
		log "$name: only ${R[ok]} of $n answered 200 ($(cat "$out.err"))"
		ERRORS=1
	fi
	if ((R[held_kib] == 0)); then
		log "$name: not all $n requests were held at once (max ${R[max_held]}); raise $4"
		ERRORS=1
	fi
}

# ------------------------------------------------------------ in flight

inflight_part() {
	local names=(drowsy) name skipped=()
	for name in $PEERS; do
		if ensure_peer "$name"; then names+=("$name"); else skipped+=("$name"); fi
	done
	((${#names[@]} >= 2)) || die "nothing to compare drowsy with (PEERS='$PEERS')"
	check_fds $((2 * N + 200)) "$N requests in flight"

	start_bg "$CLIENT_CPU" "$WORKDIR/backend.out" -- "$EXAMPLE" backend "127.0.0.1:$BACKEND_PORT" "$DELAY_MS"
	local backend=$BG_PID
	wait_ready http "$BACKEND_PORT" "slow backend" "$backend"

	log "$N requests in flight, backend answers after $DELAY_MS ms; proxies on core $PROXY_CPU (1 worker), $ROUNDS round(s)"
	local results=$WORKDIR/inflight.txt round k i n=${#names[@]} port out pids
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
			read_result "$out" "$name" "$N" DELAY_MS
			echo "$name ${R[baseline_kib]} ${R[held_kib]} ${R[per_held_b]} ${R[peak_kib]} ${R[per_peak_b]}" >>"$results"
			log "$(printf 'round %d %-8s idle %6d KiB  %d in flight %7d KiB  %6.0f B/request  peak %7d KiB  (all held after %s ms)' \
				"$round" "$name" "${R[baseline_kib]}" "$N" "${R[held_kib]}" "${R[per_held_b]}" "${R[peak_kib]}" "${R[all_held_ms]}")"
		done
	done
	stop_bg "$backend"

	echo
	echo "### Memory per request in flight"
	echo
	echo "$N requests in flight at once through one plain route, backend answering after $DELAY_MS ms;"
	echo "one worker per proxy, a fresh process per run; median of $ROUNDS run(s); $(date -u +%Y-%m-%dT%H:%MZ)"
	load_note
	versions_line "${names[@]}"
	((${#skipped[@]})) && echo "left out (could not be installed, see the log): ${skipped[*]}"
	echo
	echo "| proxy    | RSS idle (KiB) | RSS in flight (KiB) | per request in flight | peak RSS (KiB) | peak per request |"
	echo "|----------|---------------:|--------------------:|----------------------:|---------------:|-----------------:|"
	for name in "${names[@]}"; do
		local m=() col
		for col in 2 3 4 5 6; do
			m+=("$(awk -v p="$name" -v c="$col" '$1 == p { print $c }' "$results" | median)")
		done
		PER[$name]=${m[2]}
		printf '| %-8s | %14.0f | %19.0f | %17.1f KiB | %14.0f | %12.1f KiB |\n' \
			"$name" "${m[0]}" "${m[1]}" "$(awk -v b="${m[2]}" 'BEGIN { print b / 1024 }')" \
			"${m[3]}" "$(awk -v b="${m[4]}" 'BEGIN { print b / 1024 }')"
	done
	echo
	for name in "${names[@]}"; do
		[[ $name == drowsy ]] && continue
		awk -v a="${PER[drowsy]}" -v b="${PER[$name]}" -v p="$name" 'BEGIN {
			printf "drowsy / %s, memory per request in flight: %.2fx (target <= 1.00x: %s)\n", p, a / b, (a <= b ? "met" : "MISSED") }'
	done
}

# ------------------------------------------------------- held through a wake

start_wake_drowsy() {
	local dir=$1
	cat >"$dir/guests.yml" <<EOF
task_delay: 5ms
resources_refresh: 0s
guests:
  - {vmid: $GUEST_VMID, kind: lxc, name: bench, port: $GUEST_PORT, boot_delay: ${BOOT_MS}ms, shutdown_delay: 10ms}
EOF
	start_sim "$dir/guests.yml" "$SIM_PORT" "$CLIENT_CPU"
	cat >"$dir/drowsy.yml" <<EOF
listen:
  http: 127.0.0.1:$WAKE_PORT
  admin: 127.0.0.1:$ADMIN_PORT
  max_connections: $((HELD + 100))
  max_connections_per_ip: $((HELD + 100))
  max_inflight_requests: $((HELD + 100))
$(sim_proxmox_conf "$SIM_PORT" 1s)
routes:
  bench:
    host: $HOST_HEADER
    guest: $GUEST_VMID
    port: $GUEST_PORT
    idle_timeout: 1h
    wake_timeout: 60s
    max_held_requests: $((HELD + 100))
EOF
	start_bg "$PROXY_CPU" "$dir/out.log" TOKIO_WORKER_THREADS=1 -- \
		"$DROWSY_BIN" run --config "$dir/drowsy.yml" --log-level warn
	PROXY_PID=$BG_PID
	wait_routes_state "$ADMIN_PORT" 1 stopped
}

held_part() {
	check_fds $((HELD + 200)) "$HELD requests held"
	log "$HELD requests held through one wake, guest boots in $BOOT_MS ms; drowsy on core $PROXY_CPU (1 worker), $ROUNDS round(s)"
	local results=$WORKDIR/held.txt round dir out
	: >"$results"
	for ((round = 1; round <= ROUNDS; round++)); do
		dir=$WORKDIR/wake$round
		mkdir -p "$dir"
		start_wake_drowsy "$dir"
		out=$dir/result.txt
		taskset -c "$CLIENT_CPU" timeout $((BOOT_MS / 1000 + 120)) "$EXAMPLE" wake \
			"127.0.0.1:$WAKE_PORT" "127.0.0.1:$ADMIN_PORT" bench "$HELD" "$PROXY_PID" "$HOST_HEADER" \
			>"$out" 2>"$out.err" || { cat "$out.err" >&2; die "the held load failed"; }
		stop_bg "$PROXY_PID"
		stop_bg "$SIM_PID"
		read_result "$out" "drowsy (held)" "$HELD" BOOT_MS
		if ((R[wakes] != 1)); then
			log "drowsy (held): the guest woke ${R[wakes]} times, not once"
			ERRORS=1
		fi
		echo "${R[baseline_kib]} ${R[held_kib]} ${R[per_held_b]} ${R[peak_kib]} ${R[per_peak_b]} ${R[all_held_ms]} ${R[done_ms]}" >>"$results"
		log "$(printf 'round %d asleep %6d KiB  %d held %7d KiB  %6.0f B/request  peak %7d KiB  (all held after %s ms, answered after %s ms)' \
			"$round" "${R[baseline_kib]}" "$HELD" "${R[held_kib]}" "${R[per_held_b]}" "${R[peak_kib]}" "${R[all_held_ms]}" "${R[done_ms]}")"
	done

	local m=() col
	for col in 1 2 3 4 5 6 7; do
		m+=("$(awk -v c="$col" '{ print $c }' "$results" | median)")
	done
	echo
	echo "### Requests held through one wake"
	echo
	echo "$HELD requests to a sleeping guest route (drowsy sim, LXC guest booting in $BOOT_MS ms), held by the"
	echo "idle gate until one wake; one worker, fresh drowsy and simulator per run; median of $ROUNDS run(s); $(date -u +%Y-%m-%dT%H:%MZ)"
	load_note
	versions_line drowsy
	echo
	echo "| RSS asleep (KiB) | RSS, all held (KiB) | per held request | peak RSS (KiB) | peak per request | all held after | all answered after |"
	echo "|-----------------:|--------------------:|-----------------:|---------------:|-----------------:|---------------:|-------------------:|"
	printf '| %16.0f | %19.0f | %12.1f KiB | %14.0f | %12.1f KiB | %11.0f ms | %15.0f ms |\n' \
		"${m[0]}" "${m[1]}" "$(awk -v b="${m[2]}" 'BEGIN { print b / 1024 }')" "${m[3]}" \
		"$(awk -v b="${m[4]}" 'BEGIN { print b / 1024 }')" "${m[5]}" "${m[6]}"
	if [[ -n ${PER[nginx]:-} ]]; then
		echo
		awk -v a="${m[2]}" -v b="${PER[nginx]}" 'BEGIN {
			printf "drowsy held through a wake / nginx in flight, memory per request: %.2fx\n", a / b }'
	fi
}

main() {
	bench_init inflight
	need_base_tools
	NGINX_BIN=$(sbin nginx)
	build_drowsy
	if [[ $SKIP_BUILD != 1 || ! -x $EXAMPLE ]]; then
		log "building examples/inflight_bench (release)"
		(cd "$ROOT" && cargo build --release --quiet --example inflight_bench)
	fi
	check_quiet
	((N > 0)) && inflight_part
	((HELD > 0)) && held_part
	((ERRORS)) && die "some runs were not valid (see above)"
	return 0
}

ERRORS=0
declare -A R PER
main "$@"
