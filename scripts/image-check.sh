#!/usr/bin/env bash
# Builds the container image from the Dockerfile with locally made bases and
# runs it with docker-compose.yml's constraints: uid/gid 65532, read-only
# root, no capabilities, no-new-privileges, the state volume, the config
# mounted read-only, ports 80 and 9090, then its HEALTHCHECK.
#
#   scripts/build-static.sh x86_64 && scripts/image-check.sh [BINARY]
#
# No registry is reachable here, so:
# - the run stage's base (RUN_IMAGE) is a Debian root made by mmdebstrap and
#   imported into podman (distroless is a Debian root without a shell or a
#   package manager; drowsy's static binary needs neither);
# - the build stage is replaced by one that copies the static binary in:
#   the real one compiles with RUN, and RUN needs a container runtime;
#   everything from "# ---- run" on is the Dockerfile's own text.
# Then `podman run` with the compose file's flags. Where the runtime is
# refused (here crun and runc both fail to set RLIMIT_NOFILE for the
# container's first process: "Operation not permitted"), the same image's
# root file system is run as the compose file would run it, with unshare,
# chroot and setpriv (the base root's own; distroless has none, so this
# needs the Debian base): uid/gid 65532, no groups, empty capability sets,
# no_new_privs, a read-only root, a writable volume at /var/lib/drowsy, the
# config read-only, its own network namespace with
# ip_unprivileged_port_start=0; and the HEALTHCHECK command from the image's
# own config is run inside it.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
binary=${1:-${DROWSY_DIST:-${CARGO_TARGET_DIR:-target}/dist}/drowsy-$version-x86_64-linux}
[ -x "$binary" ] || { echo "image-check: no static binary at $binary (scripts/build-static.sh x86_64)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/drowsy-image-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
step() { echo "image-check: $*"; }
fail() { echo "image-check: FAIL: $*" >&2; exit 1; }

step "the run stage's base: a bookworm root from mmdebstrap, imported into podman"
mmdebstrap --quiet --variant=essential --include=ca-certificates bookworm "$work/base.tar" >/dev/null 2>"$work/mmdebstrap.log" ||
    { cat "$work/mmdebstrap.log" >&2; fail mmdebstrap; }
podman import --quiet "$work/base.tar" localhost/drowsy-run-base:bookworm >/dev/null

step "podman build with RUN_IMAGE=localhost/drowsy-run-base:bookworm"
mkdir -p "$work/context/state"
cp "$binary" "$work/context/drowsy"
chmod 0700 "$work/context/state"
{
    echo 'FROM scratch AS build'
    echo 'COPY drowsy /out/drowsy'
    echo 'COPY state /out/state'
    sed -n '/^# ---- run/,$p' Dockerfile
} >"$work/context/Dockerfile"
# ARG before the first FROM is global: the run stage's FROM ${RUN_IMAGE}.
sed -i '1i ARG RUN_IMAGE' "$work/context/Dockerfile"
podman build --quiet --format docker --network none \
    --build-arg RUN_IMAGE=localhost/drowsy-run-base:bookworm \
    -t localhost/drowsy:check "$work/context" >/dev/null

inspect() { podman image inspect --format "$1" localhost/drowsy:check; }
[ "$(inspect '{{.Config.User}}')" = "65532:65532" ] || fail "USER: $(inspect '{{.Config.User}}')"
[ "$(inspect '{{json .Config.Entrypoint}}')" = '["/usr/local/bin/drowsy"]' ] || fail "ENTRYPOINT"
[ "$(inspect '{{json .Config.Cmd}}')" = '["run"]' ] || fail "CMD"
inspect '{{json .Config.Env}}' | grep -q '"DROWSY_CONFIG=/etc/drowsy/drowsy.yml"' || fail "ENV DROWSY_CONFIG"
inspect '{{json .Config.Volumes}}' | grep -q '"/var/lib/drowsy"' || fail "VOLUME"
health=$(inspect '{{json .Config.Healthcheck.Test}}')
[ "$health" = '["CMD","/usr/local/bin/drowsy","health"]' ] || fail "HEALTHCHECK: $health"
step "image: user 65532:65532, entrypoint, cmd, env, volume and health check as the Dockerfile says"

# The config a container needs: every listener on 0.0.0.0.
mkdir -p "$work/state"
chown 65532:65532 "$work/state"
chmod 0700 "$work/state"
cat >"$work/drowsy.yml" <<'EOF'
listen:
  http: 0.0.0.0:80
  admin: 0.0.0.0:9090
  admin_token: ${DROWSY_ADMIN_TOKEN}
routes:
  self:
    host: drowsy.test
    backend: http://127.0.0.1:9090
EOF
chmod 0644 "$work/drowsy.yml"

step "podman run with the compose file's constraints"
if podman run --rm -d --name drowsy-image-check --network none \
    --user 65532:65532 --read-only --cap-drop ALL --security-opt no-new-privileges \
    --sysctl net.ipv4.ip_unprivileged_port_start=0 -e DROWSY_ADMIN_TOKEN=image-check-admin-token-0123456789 \
    -v "$work/state:/var/lib/drowsy" -v "$work/drowsy.yml:/etc/drowsy/drowsy.yml:ro" \
    localhost/drowsy:check >"$work/run.log" 2>&1; then
    sleep 2
    podman exec drowsy-image-check /usr/local/bin/drowsy health || fail "health check in the container"
    podman rm -f drowsy-image-check >/dev/null
    step "ok: the container ran and its health check passed"
    exit 0
fi
step "podman run was refused: $(tail -1 "$work/run.log")"
step "running the image's root file system with the same constraints instead"

# A copy of the image's root file system, with mount points for the config
# and the volume as the container runtime would make them.
rootfs="$work/rootfs"
mkdir -p "$rootfs"
podman image mount localhost/drowsy:check >"$work/mounted"
cp -a "$(cat "$work/mounted")/." "$rootfs/"
podman image unmount localhost/drowsy:check >/dev/null
mkdir -p "$rootfs/etc/drowsy" "$work/etc-drowsy"
touch "$rootfs/etc/drowsy/drowsy.yml"
cp "$work/drowsy.yml" "$work/etc-drowsy/drowsy.yml"
entry=$(inspect '{{index .Config.Entrypoint 0}}')
health_cmd=$(inspect '{{range $i, $a := .Config.Healthcheck.Test}}{{if $i}} {{$a}}{{end}}{{end}}')
health_cmd=${health_cmd# }
# The image's environment, as the container would have it.
mapfile -t env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' localhost/drowsy:check | grep .)
unshare --net --mount --pid --fork --mount-proc bash ${DROWSY_IMAGE_TRACE:+-x} -c '
    set -euo pipefail
    rootfs=$1 work=$2 entry=$3 health=$4; shift 4
    ip link set lo up
    sysctl -q -w net.ipv4.ip_unprivileged_port_start=0
    mount --bind "$rootfs" "$rootfs"
    mount --bind "$work/state" "$rootfs/var/lib/drowsy"
    mount --bind "$work/etc-drowsy/drowsy.yml" "$rootfs/etc/drowsy/drowsy.yml"
    mount -o remount,bind,ro "$rootfs/etc/drowsy/drowsy.yml"
    mount -t proc proc "$rootfs/proc"
    mount -o remount,bind,ro "$rootfs"
    # What `docker run --user 65532:65532 --cap-drop ALL --security-opt
    # no-new-privileges` makes of a process.
    as_container() {
        # setpriv from the base root (util-linux): it drops the bounding set
        # while still root, then changes to 65532, which empties the rest.
        env -i "${env[@]}" DROWSY_ADMIN_TOKEN=image-check-admin-token-0123456789 chroot "$rootfs" \
            setpriv --reuid=65532 --regid=65532 --clear-groups --no-new-privs \
            --inh-caps=-all --ambient-caps=-all --bounding-set=-all "$@"
    }
    env=("$@")
    as_container "$entry" run >"$work/drowsy.log" 2>&1 &
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/80) 2>/dev/null && break
        sleep 0.1
    done
    pid=$(pgrep -x drowsy | head -1 || true)
    [ -n "$pid" ] || { echo "drowsy did not start: $(cat "$work/drowsy.log")"; exit 1; }
    grep -q "^CapEff:\s*0000000000000000" "/proc/$pid/status" || { echo "capabilities: $(grep Cap "/proc/$pid/status")"; exit 1; }
    grep -q "^CapBnd:\s*0000000000000000" "/proc/$pid/status" || { echo "bounding set: $(grep CapBnd "/proc/$pid/status")"; exit 1; }
    grep -q "^NoNewPrivs:\s*1" "/proc/$pid/status" || { echo "no_new_privs not set"; exit 1; }
    [ "$(stat -c %u "/proc/$pid")" = 65532 ] || { echo "not uid 65532"; exit 1; }
    echo "image-check: drowsy runs as uid 65532, no capabilities, no_new_privs, listening on :80 and :9090"
    # shellcheck disable=SC2086
    as_container $health || { echo "health check failed: $(cat "$work/drowsy.log")"; exit 1; }
    echo "image-check: the HEALTHCHECK command ($health) exits 0"
    exec 3<>/dev/tcp/127.0.0.1/80
    printf "GET /healthz HTTP/1.1\r\nHost: drowsy.test\r\nConnection: close\r\n\r\n" >&3
    timeout 10 cat <&3 | head -1 | grep -q "^HTTP/1.1 200" || { echo "no answer through the route on :80"; exit 1; }
    echo "image-check: a request on :80 through a route: 200"
    as_container "$entry" check >/dev/null || { echo "drowsy check in the image failed"; exit 1; }
    # Not even root may write there: read-only mounts.
    if touch "$rootfs/x" 2>/dev/null || touch "$rootfs/etc/drowsy/drowsy.yml" 2>/dev/null; then
        echo "the root or the config is writable"; exit 1
    fi
    echo "image-check: root and config read-only; the volume /var/lib/drowsy is $(stat -c "%a %u:%g" "$rootfs/var/lib/drowsy")"
    kill -TERM "$pid"
    wait || true
' image-check "$rootfs" "$work" "$entry" "$health_cmd" "${env[@]}" || fail "the image's root file system under the compose constraints"
step "ok (the container runtime itself could not run here; see above)"
