#!/usr/bin/env bash
# Checks drowsy's loading page in a real headless browser (Debian's chromium).
#
#   scripts/browser-check.sh
#
# Starts `drowsy sim` with one sleeping LXC guest (boot_delay 2s) and
# `drowsy run` in front of it, all on loopback, then opens
# http://whoami.localhost:PORT/ in headless Chromium:
#   1. with JavaScript: the loading page ("Waking whoami…") lists progress
#      steps from /.drowsy/events, then reloads by itself into the guest's
#      JSON answer;
#   2. the guest is put back to sleep (admin API), and the page is fetched as
#      a navigation without a browser: 503, no-store, a <noscript> meta refresh;
#   3. with JavaScript off: the meta refresh alone brings the browser to the
#      guest's answer;
#   4. asleep again, with JavaScript and a dark color scheme: a second wake
#      in the same drowsy process behaves like the first;
#   5. a guest whose start fails (route `broken`): the page shows the error
#      and a "Try again" button, and does not reload in a loop;
#   6. the dashboard (admin /): every route listed (`notes` from its Proxmox
#      tag), live over server-sent events, whoami woken from its Wake button,
#      its journal shown from its Logs link, no console errors; again with a
#      dark color scheme, and with JavaScript off as a static table.
# Screenshots of each stage are saved in a temporary directory, printed at
# the end. Installs chromium (apt) and playwright-core (npm, into
# scripts/browser/node_modules) when missing; it never downloads a browser.
#
# Environment: UPDATE_DOCS=1 copies the dashboard and loading page
# screenshots into docs/screenshots/ (the README shows them);
# KEEP=1 keeps the temporary directory's logs even on success
# (screenshots are always kept); CHROMIUM=PATH uses another Chromium binary;
# BROWSER_CHECK_LOAD_MS, _STEP_MS, _READY_MS change the deadlines (ms) for the
# loading page, its first progress step, and the guest's answer.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BROWSER_DIR=$ROOT/scripts/browser
ROUTE=whoami
HOST=whoami.localhost
VMID=106
BROKEN_VMID=108
NOTES_VMID=107

say() { printf '== %s\n' "$*"; }
die() {
    printf 'browser-check: FAILED: %s\n' "$*" >&2
    exit 1
}

# --- tools -------------------------------------------------------------------

export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
    say "installing chromium (apt)"
    [ "$(id -u)" = 0 ] || die "chromium is missing and installing it needs root"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    [ -x "$CHROMIUM" ] || die "chromium did not install at $CHROMIUM"
fi
command -v node >/dev/null || die "node is required (apt-get install nodejs npm)"
command -v curl >/dev/null || die "curl is required"
if [ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
    say "installing playwright-core (npm, into scripts/browser/node_modules)"
    (cd "$BROWSER_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

say "building drowsy"
(cd "$ROOT" && cargo build --quiet)
DROWSY=$ROOT/target/debug/drowsy

# --- processes, cleaned up on any exit ---------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/drowsy-browser-check.XXXXXX")
SHOTS=$WORK/screenshots
mkdir -p "$SHOTS"
PIDS=()
cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Give each process a moment to stop on SIGINT, then insist.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" != 0 ]; then
        for f in sim.log drowsy.log; do
            [ -f "$WORK/$f" ] && { echo "--- last lines of $WORK/$f" >&2; tail -n 30 "$WORK/$f" >&2; }
        done
        echo "browser-check: logs and screenshots kept in $WORK" >&2
    elif [ -z "${KEEP:-}" ]; then
        rm -f "$WORK"/*.yml "$WORK"/*.log
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports, picked by the kernel.
free_port() {
    node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close();});'
}
SIM_PORT=$(free_port)
HTTP_PORT=$(free_port)
ADMIN_PORT=$(free_port)
GUEST_PORT=$(free_port)

wait_for() { # WHAT SECONDS COMMAND...
    local what=$1 secs=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || die "$what within ${secs}s"
        sleep 0.1
    done
}

cat >"$WORK/guests.yml" <<EOF
resources_refresh: 0s
task_delay: 300ms
guests:
  - vmid: $VMID
    kind: lxc
    name: $ROUTE
    port: $GUEST_PORT
    running: false
    boot_delay: 2s
    shutdown_delay: 500ms
  - vmid: $BROKEN_VMID
    kind: lxc
    name: broken
    port: $GUEST_PORT
    fail_start: "startup for container '$BROKEN_VMID' failed"
  - vmid: $NOTES_VMID
    kind: lxc
    name: notes
    port: $GUEST_PORT
    running: true
    tags: [drowsy, port-$GUEST_PORT]
EOF

say "starting drowsy sim on 127.0.0.1:$SIM_PORT"
"$DROWSY" sim --plain-http --listen "127.0.0.1:$SIM_PORT" --guests "$WORK/guests.yml" \
    >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
wait_for "the simulator did not come up" 20 grep -q 'press Ctrl-C' "$WORK/sim.log"

cat >"$WORK/drowsy.yml" <<EOF
listen:
  http: 127.0.0.1:$HTTP_PORT
  admin: 127.0.0.1:$ADMIN_PORT
proxmox:
  - name: sim
    url: http://127.0.0.1:$SIM_PORT
    # root@pam with a ticket: the dashboard's Logs link reads journals
    # through the node's terminal.
    username: root@pam
    password: root-of-all-guests
    poll_interval: 1s
    insecure_loopback_guests: true   # the simulated guests live on 127.0.x.y
auto_routes:
  domain: localhost
  idle_timeout: 30s
routes:
  $ROUTE:
    host: $HOST
    guest: $VMID
    port: $GUEST_PORT
    idle_timeout: 30s
    wake_timeout: 30s
  broken:
    host: broken.localhost
    guest: $BROKEN_VMID
    port: $GUEST_PORT
    idle_timeout: 30s
EOF

say "starting drowsy on 127.0.0.1:$HTTP_PORT (admin 127.0.0.1:$ADMIN_PORT)"
"$DROWSY" --log-level info run --config "$WORK/drowsy.yml" >"$WORK/drowsy.log" 2>&1 &
PIDS+=($!)
ADMIN=http://127.0.0.1:$ADMIN_PORT
URL=http://$HOST:$HTTP_PORT/

route_state() {
    curl -fsS "$ADMIN/api/routes" | node -e \
        'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s)[process.argv[1]].state))' "$ROUTE"
}
state_is() { [ "$(route_state)" = "$1" ]; }
wait_for "drowsy did not answer on its admin port" 20 curl -fsS "$ADMIN/healthz"
wait_for "drowsy did not see the guest as stopped" 20 state_is stopped

run_browser() { # WHAT LOGFILE check.js-ARGS...
    local what=$1 log=$2 why
    shift 2
    if ! node "$BROWSER_DIR/check.js" "$@" 2>&1 | tee "$log"; then
        why=$(sed -n 's/^\[browser [a-z]*\] FAILED: //p' "$log" | head -n1)
        die "$what: ${why:-see above}"
    fi
}

check_guest_answer() { # LOGFILE
    local answer
    answer=$(sed -n 's/^GUEST_ANSWER //p' "$1")
    [ -n "$answer" ] || die "no guest answer in $1"
    node -e 'const a=JSON.parse(process.argv[1]);
        if(a.guest!==process.argv[2]||a.vmid!==Number(process.argv[3])){
            console.error("the answer is not from guest "+process.argv[2]+": "+process.argv[1]);process.exit(1);}' \
        "$answer" "$ROUTE" "$VMID" || die "the page did not show the guest's answer"
}

# --- 1. with JavaScript ------------------------------------------------------

say "1. chromium, JavaScript on: $URL"
run_browser "JavaScript on" "$WORK/js.log" js "$URL" "$ROUTE" "$SHOTS"
check_guest_answer "$WORK/js.log"

# --- 2. back to sleep; the page as a browser without JavaScript gets it -------

say "2. putting $ROUTE back to sleep"
curl -fsS -X POST -H 'Content-Type: application/json' "$ADMIN/api/routes/$ROUTE/sleep" >/dev/null || die "POST /api/routes/$ROUTE/sleep failed"
wait_for "the guest did not go back to sleep" 20 state_is stopped

# HEAD would not do: only GET navigations get the page. This request starts
# a wake, so the guest is put to sleep again before step 3.
say "   fetching the page as a navigation, without a browser"
curl -sS -o "$WORK/page.html" -D "$WORK/page.headers" \
    -H "Host: $HOST" -H 'Sec-Fetch-Mode: navigate' -H 'Accept: text/html' \
    "http://127.0.0.1:$HTTP_PORT/"
head -n1 "$WORK/page.headers" | grep -q ' 503' || die "the loading page is not a 503: $(head -n1 "$WORK/page.headers")"
grep -qi '^cache-control: no-store' "$WORK/page.headers" || die "the loading page lacks Cache-Control: no-store"
grep -qi '^retry-after:' "$WORK/page.headers" || die "the loading page lacks Retry-After"
grep -Eq '<noscript><meta http-equiv="refresh" content="[0-9]+"></noscript>' "$WORK/page.html" ||
    die "the loading page has no <noscript> meta refresh"
echo "   503, no-store, Retry-After, $(grep -o '<noscript><meta[^>]*>' "$WORK/page.html")"
wait_for "the guest did not wake after the navigation" 30 state_is running
curl -fsS -X POST -H 'Content-Type: application/json' "$ADMIN/api/routes/$ROUTE/sleep" >/dev/null || die "POST /api/routes/$ROUTE/sleep failed"
wait_for "the guest did not go back to sleep" 20 state_is stopped

# --- 3. without JavaScript -----------------------------------------------------

say "3. chromium, JavaScript off: $URL"
run_browser "JavaScript off" "$WORK/nojs.log" nojs "$URL" "$ROUTE" "$SHOTS"
check_guest_answer "$WORK/nojs.log"

# --- 4. a second wake, with JavaScript -----------------------------------------

say "4. putting $ROUTE back to sleep; chromium, JavaScript on, second wake"
curl -fsS -X POST -H 'Content-Type: application/json' "$ADMIN/api/routes/$ROUTE/sleep" >/dev/null || die "POST /api/routes/$ROUTE/sleep failed"
wait_for "the guest did not go back to sleep" 20 state_is stopped
BROWSER_CHECK_COLOR_SCHEME=dark run_browser "second wake" "$WORK/js-again.log" \
    js "$URL" "$ROUTE" "$SHOTS" js-again-dark
check_guest_answer "$WORK/js-again.log"

# --- 5. a guest that cannot start ---------------------------------------------

say "5. chromium, JavaScript on, a guest whose start fails: http://broken.localhost:$HTTP_PORT/"
run_browser "failed wake" "$WORK/fail.log" fail "http://broken.localhost:$HTTP_PORT/" broken "$SHOTS"
grep -q '^FAIL_PATH_OK' "$WORK/fail.log" || die "the failed-wake check did not finish"

# --- 6. the dashboard ------------------------------------------------------------

sleep_route() {
    curl -fsS -X POST -H 'Content-Type: application/json' "$ADMIN/api/routes/$ROUTE/sleep" >/dev/null ||
        die "POST /api/routes/$ROUTE/sleep failed"
    wait_for "the guest did not go back to sleep" 20 state_is stopped
}
say "6. the dashboard: $ADMIN/"
wait_for "the route from the notes guest's tag did not appear" 20 \
    sh -c "curl -fsS '$ADMIN/api/routes' | grep -q '\"notes\"'"
sleep_route
run_browser "dashboard" "$WORK/dashboard.log" dashboard "$ADMIN/" "$ROUTE" "$SHOTS" dashboard
grep -q '^DASHBOARD_OK' "$WORK/dashboard.log" || die "the dashboard check did not finish"
say "   again in a dark color scheme"
sleep_route
BROWSER_CHECK_COLOR_SCHEME=dark run_browser "dashboard, dark" "$WORK/dashboard-dark.log" \
    dashboard "$ADMIN/" "$ROUTE" "$SHOTS" dashboard-dark
grep -q '^DASHBOARD_OK' "$WORK/dashboard-dark.log" || die "the dark dashboard check did not finish"
say "   and with JavaScript off"
run_browser "dashboard without JavaScript" "$WORK/dashboard-nojs.log" \
    dashboard-nojs "$ADMIN/" "$ROUTE" "$SHOTS" dashboard-nojs
grep -q '^DASHBOARD_OK' "$WORK/dashboard-nojs.log" || die "the static dashboard check did not finish"

if [ -n "${UPDATE_DOCS:-}" ]; then
    DOCS=$ROOT/docs/screenshots
    mkdir -p "$DOCS"
    cp "$SHOTS/dashboard-2-woken.png" "$DOCS/dashboard.png"
    cp "$SHOTS/dashboard-dark-1-dashboard.png" "$DOCS/dashboard-dark.png"
    cp "$SHOTS/dashboard-3-logs.png" "$DOCS/logs.png"
    cp "$SHOTS/js-again-dark-1-loading.png" "$DOCS/loading-dark.png"
    say "screenshots copied to $DOCS"
fi

say "all checks passed; screenshots:"
for f in "$SHOTS"/*.png; do echo "   $f"; done
