#!/usr/bin/env bash
# Idle memory with many routes: drowsy against nginx, side by side in one run.
#
#   bench/idle.sh [ROUTES=100]
#
# Configurations, each started as a fresh process (one worker) and measured
# when its RSS stops moving (nginx: master + worker):
#   - 1 route and ROUTES static routes, drowsy and nginx; route i has its own
#     host (rI.bench.local) and its own backend port, so each proxy keeps
#     ROUTES separate upstreams / connection pools;
#   - drowsy with ROUTES guest routes against `drowsy sim` (ROUTES stopped
#     LXC guests), measured once the first poll has shown every guest asleep.
# Each is read at start and again after one request to every route (which
# opens a backend connection per route for the static configurations).
# Loopback only; every wait is bounded.
#
# Environment (defaults in brackets):
#   ROUNDS [3]          fresh-process runs per configuration (medians shown)
#   SETTLE [1]          seconds to wait after startup before sampling RSS
#   PROXY_CPU [0]       core for the proxies; CLIENT_CPU [1] for the rest
#   BASE_PORT [18380]   proxies on BASE_PORT..+9, the simulator on +9,
#                       backends from BASE_PORT+100
#   SKIP_BUILD, KEEP_WORKDIR: see bench/lib.sh

set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUTES=${1:-${ROUTES:-100}}
ROUNDS=${ROUNDS:-3}
SETTLE=${SETTLE:-1}
PROXY_CPU=${PROXY_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-18380}
PROXY_PORT=$BASE_PORT
ADMIN_PORT=$((BASE_PORT + 1))
SIM_PORT=$((BASE_PORT + 9))
BACKEND_BASE=$((BASE_PORT + 100))
VMID_BASE=200

host_of() { printf 'r%03d.%s' "$1" "$HOST_HEADER"; }

# ---------------------------------------------------------------- configs

drowsy_static_conf() {
	local n=$1 i
	cat <<EOF
listen:
  http: 127.0.0.1:$PROXY_PORT
  admin: 127.0.0.1:$ADMIN_PORT
routes:
EOF
	for ((i = 0; i < n; i++)); do
		printf '  r%03d:\n    host: %s\n    backend: http://127.0.0.1:%d\n' "$i" "$(host_of "$i")" $((BACKEND_BASE + i))
	done
}

drowsy_guest_conf() {
	local n=$1 i
	cat <<EOF
listen:
  http: 127.0.0.1:$PROXY_PORT
  admin: 127.0.0.1:$ADMIN_PORT
$(sim_proxmox_conf "$SIM_PORT")
defaults:
  idle_timeout: 15m
routes:
EOF
	for ((i = 0; i < n; i++)); do
		printf '  r%03d:\n    host: %s\n    guest: %d\n    port: 8080\n' "$i" "$(host_of "$i")" $((VMID_BASE + i))
	done
}

nginx_static_body() {
	local n=$1 i
	for ((i = 0; i < n; i++)); do
		cat <<EOF
    upstream r$i {
        server 127.0.0.1:$((BACKEND_BASE + i));
        keepalive 16;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        server_name $(host_of "$i");
        location / {
            proxy_pass http://r$i;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
EOF
	done
}

# ---------------------------------------------------------------- measuring

# After SETTLE, samples RSS every 50 ms until five samples in a row are
# equal (at most 5 s more).
settled_rss() {
	local last same=0 i kib
	sleep "$SETTLE"
	last=$(proc_rss_kib "$@")
	for ((i = 0; i < 100 && same < 5; i++)); do
		sleep 0.05
		kib=$(proc_rss_kib "$@")
		if [[ $kib == "$last" ]]; then same=$((same + 1)); else same=0; fi
		last=$kib
	done
	echo "$last"
}

# One request to every route; for guest routes only the route lookup and
# gate are exercised (a sleeping guest's first request would wake it, so the
# guest configuration sends none and reports the idle figure twice).
touch_routes() {
	local n=$1 i code
	for ((i = 0; i < n; i++)); do
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $(host_of "$i")" "http://127.0.0.1:$PROXY_PORT/")
		[[ $code == 200 ]] || die "route $(host_of "$i") answered $code"
	done
}

# measure KIND PROXY ROUTES: sets IDLE_KIB and TOUCHED_KIB. (Not run in a
# subshell, so the cleanup on exit knows every process it starts.)
measure() {
	local kind=$1 proxy=$2 n=$3 dir=$WORKDIR/$1-$2-$3 pid
	mkdir -p "$dir"
	case $proxy-$kind in
	drowsy-static)
		drowsy_static_conf "$n" >"$dir/drowsy.yml"
		start_bg "$PROXY_CPU" "$dir/out.log" TOKIO_WORKER_THREADS=1 -- \
			"$DROWSY_BIN" run --config "$dir/drowsy.yml" --log-level warn
		;;
	drowsy-guest)
		drowsy_guest_conf "$n" >"$dir/drowsy.yml"
		start_bg "$PROXY_CPU" "$dir/out.log" TOKIO_WORKER_THREADS=1 -- \
			"$DROWSY_BIN" run --config "$dir/drowsy.yml" --log-level warn
		;;
	nginx-static)
		write_nginx_conf "$dir/nginx.conf" "nginx-$kind-$n" 1 1024 "$(nginx_static_body "$n")"
		start_bg "$PROXY_CPU" "$dir/out.log" -- "$NGINX_BIN" -p "$WORKDIR/nginx-$kind-$n" -c "$dir/nginx.conf"
		;;
	esac
	pid=$BG_PID
	if [[ $kind == guest ]]; then
		wait_routes_state "$ADMIN_PORT" "$n" stopped
	else
		HOST_HEADER=$(host_of 0) wait_ready http "$PROXY_PORT" "$proxy" "$pid"
	fi
	# shellcheck disable=SC2046 # the process tree, one pid per word
	IDLE_KIB=$(settled_rss $(proc_tree "$pid"))
	TOUCHED_KIB=$IDLE_KIB
	if [[ $kind == static ]]; then
		touch_routes "$n"
		# shellcheck disable=SC2046
		TOUCHED_KIB=$(settled_rss $(proc_tree "$pid"))
	fi
	stop_bg "$pid"
}

main() {
	bench_init idle
	need_base_tools
	NGINX_BIN=$(sbin nginx)
	build_drowsy
	check_quiet
	start_backend "$BACKEND_BASE" 1 "$CLIENT_CPU" "$ROUTES"
	local i
	{
		echo "task_delay: 100ms"
		echo "resources_refresh: 0s"
		echo "guests:"
		for ((i = 0; i < ROUTES; i++)); do
			printf '  - {vmid: %d, kind: lxc, name: g%d, port: 8080}\n' $((VMID_BASE + i)) $((VMID_BASE + i))
		done
	} >"$WORKDIR/guests.yml"
	start_sim "$WORKDIR/guests.yml" "$SIM_PORT" "$CLIENT_CPU"

	local configs=("static drowsy 1" "static nginx 1" "static drowsy $ROUTES" "static nginx $ROUTES" "guest drowsy $ROUTES")
	local results=$WORKDIR/results.txt round c k n=${#configs[@]}
	: >"$results"
	log "idle RSS: ${#configs[@]} configurations, $ROUNDS round(s), one worker each on core $PROXY_CPU"
	for ((round = 1; round <= ROUNDS; round++)); do
		for ((k = 0; k < n; k++)); do
			c=${configs[$(((k + round - 1) % n))]}
			# shellcheck disable=SC2086 # KIND PROXY ROUTES
			measure $c
			echo "${c// /-} $IDLE_KIB $TOUCHED_KIB" >>"$results"
			log "round $round: $c routes: idle $IDLE_KIB KiB, after a request per route $TOUCHED_KIB KiB"
		done
	done

	echo
	echo "### Idle memory with many routes"
	echo
	echo "RSS (nginx: master + worker), one worker each, a fresh process per run, median of $ROUNDS run(s);"
	echo "drowsy with its admin listener on; $(date -u +%Y-%m-%dT%H:%MZ)"
	load_note
	versions_line drowsy nginx
	echo
	echo "| configuration                     | RSS idle (KiB) | after a request per route (KiB) |"
	echo "|-----------------------------------|---------------:|--------------------------------:|"
	local -A idle touched
	for c in "${configs[@]}"; do
		local key=${c// /-} label
		idle[$key]=$(awk -v k="$key" '$1 == k { print $2 }' "$results" | median)
		touched[$key]=$(awk -v k="$key" '$1 == k { print $3 }' "$results" | median)
		read -r kind proxy routes <<<"$c"
		label="$proxy, $routes $kind route(s)"
		[[ $kind == guest ]] && label="$proxy, $routes guest routes (asleep)"
		if [[ $kind == guest ]]; then
			printf '| %-33s | %14.0f | %31s |\n' "$label" "${idle[$key]}" "(none sent: it would wake)"
		else
			printf '| %-33s | %14.0f | %31.0f |\n' "$label" "${idle[$key]}" "${touched[$key]}"
		fi
	done
	echo
	for routes in 1 "$ROUTES"; do
		awk -v a="${idle[static-drowsy-$routes]}" -v b="${idle[static-nginx-$routes]}" \
			-v c="${touched[static-drowsy-$routes]}" -v d="${touched[static-nginx-$routes]}" -v r="$routes" 'BEGIN {
			printf "drowsy / nginx, %d route(s): idle %.2fx, after a request per route %.2fx\n", r, a / b, c / d }'
	done
	awk -v a="${idle[static-drowsy-$ROUTES]}" -v b="${idle[static-drowsy-1]}" -v g="${idle[guest-drowsy-$ROUTES]}" \
		-v c="${idle[static-nginx-$ROUTES]}" -v d="${idle[static-nginx-1]}" -v r="$ROUTES" 'BEGIN {
		printf "per extra static route, idle: drowsy %.1f KiB, nginx %.1f KiB; %d guest routes: drowsy %.0f KiB\n",
			(a - b) / (r - 1), (c - d) / (r - 1), r, g }'
}

main "$@"
