#!/usr/bin/env bash
# Installs the Debian package into clean Debian roots and checks it the way a
# user would meet it: `apt install ./drowsy_*.deb`, the files, owners and
# modes, the enabled-but-not-started unit, `drowsy check` on the installed
# config (as the service's user), a `drowsy demo` wake end to end, an upgrade
# that keeps an edited config, then `apt remove` and `apt purge`.
#
#   packaging/deb-check.sh                 # builds a quick .deb from a debug build
#   packaging/deb-check.sh drowsy_*.deb    # checks a given package (e.g. a release one)
#   DROWSY_DEB_SUITES="bookworm trixie" packaging/deb-check.sh
#
# Needs root, cargo-deb (without a DEB argument), mmdebstrap, unshare and ip,
# and Debian's package mirror (for the roots and the package's dependencies).
# The demo runs in a network namespace of its own, so it takes no port here.
set -euo pipefail
cd "$(dirname "$0")/.."

suites=${DROWSY_DEB_SUITES:-bookworm}
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d "${TMPDIR:-/tmp}/drowsy-deb-check.XXXXXX")
# DROWSY_DEB_KEEP=1 keeps the roots and logs for a look after a failure.
[ -n "${DROWSY_DEB_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT

fail() { echo "deb-check: FAIL: $*" >&2; exit 1; }
step() { echo "deb-check: $*"; }

deb=${1:-}
if [ -z "$deb" ]; then
    # A debug build is enough to check the packaging and is what `cargo
    # test` has just built; release packages are made as packaging/README.md
    # says. Stripped, and xz at its fastest level: seconds (cargo-deb's gzip is
    # zopfli, which took 90 s here).
    cargo build --quiet --bin drowsy
    start=$(date +%s)
    cargo deb --quiet --no-build --profile dev --strip --fast -o "$work/" >/dev/null 2>"$work/cargo-deb.log" ||
        { cat "$work/cargo-deb.log" >&2; fail "cargo deb"; }
    deb=$(ls "$work"/drowsy_*.deb)
    step "built $(basename "$deb") ($(du -h "$deb" | cut -f1)) in $(($(date +%s) - start)) s"
fi
[ -f "$deb" ] || fail "no package at $deb"

# Runs a command inside the root, with /proc and /dev, in a mount namespace
# of its own (nothing stays mounted after it), with a clean environment.
in_root() {
    local root=$1
    shift
    unshare --mount --fork sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"' in_root "$root" "$@"
}

# The same, with a network of its own holding only loopback.
in_root_offline() {
    local root=$1
    shift
    unshare --net --mount --fork sh -c '
        root=$1; shift
        ip link set lo up
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"' in_root "$root" "$@"
}

# stat's "mode owner:group" of a path in the root.
mode_of() { in_root "$1" stat -c '%a %U:%G' "$2"; }

expect_mode() {
    local got
    got=$(mode_of "$1" "$2") || fail "$2 is missing"
    [ "$got" = "$3" ] || fail "$2: $got, want $3"
}

check_suite() {
    local suite=$1 root="$work/$1"
    step "$suite: making a clean root"
    mkdir -p "$root"
    mmdebstrap --quiet --variant=apt --skip=cleanup/apt/lists "$suite" "$root" >/dev/null 2>"$work/mmdebstrap-$suite.log" ||
        { cat "$work/mmdebstrap-$suite.log" >&2; fail "mmdebstrap $suite"; }
    cp "$deb" "$root/tmp/drowsy.deb"

    step "$suite: apt install ./drowsy.deb"
    in_root "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/drowsy.deb >"$work/install-$suite.log" 2>&1 ||
        { cat "$work/install-$suite.log" >&2; fail "apt install on $suite"; }
    grep -q "enabled, but not started" "$work/install-$suite.log" || fail "postinst did not say the service is not started"

    expect_mode "$root" /usr/bin/drowsy "755 root:root"
    expect_mode "$root" /etc/drowsy/drowsy.yml "640 root:drowsy"
    expect_mode "$root" /etc/drowsy/drowsy.env "600 root:root"
    expect_mode "$root" /var/lib/drowsy "700 drowsy:drowsy"
    expect_mode "$root" /usr/lib/systemd/system/drowsy.service "644 root:root"
    expect_mode "$root" /usr/lib/systemd/system/drowsy.service.d/package.conf "644 root:root"
    for f in /usr/share/bash-completion/completions/drowsy /usr/share/zsh/vendor-completions/_drowsy \
        /usr/share/fish/vendor_completions.d/drowsy.fish /usr/share/man/man1/drowsy.1.gz \
        /usr/share/man/man1/drowsy-check.1.gz /usr/share/doc/drowsy/copyright; do
        expect_mode "$root" "$f" "644 root:root"
    done
    local conffiles
    conffiles=$(cat "$root/var/lib/dpkg/info/drowsy.conffiles")
    [ "$conffiles" = $'/etc/drowsy/drowsy.env\n/etc/drowsy/drowsy.yml' ] ||
        [ "$conffiles" = $'/etc/drowsy/drowsy.yml\n/etc/drowsy/drowsy.env' ] || fail "conffiles: $conffiles"
    cmp -s config.example.yml "$root/etc/drowsy/drowsy.yml" || fail "/etc/drowsy/drowsy.yml is not config.example.yml"
    # A system user with no login and no home of its own making.
    local pw
    pw=$(in_root "$root" getent passwd drowsy) || fail "no drowsy user"
    IFS=: read -r _ _ uid _ _ home shell <<<"$pw"
    [ "$uid" -lt 1000 ] || fail "drowsy's uid $uid is not a system uid"
    [ "$home" = /var/lib/drowsy ] || fail "drowsy's home: $home"
    [ "$shell" = /usr/sbin/nologin ] || fail "drowsy's shell: $shell"
    # Enabled (deb-systemd-helper made the link) but not started (no
    # systemd here; the postinst's message says so).
    [ -L "$root/etc/systemd/system/multi-user.target.wants/drowsy.service" ] || fail "the unit is not enabled"

    local version
    version=$(in_root "$root" drowsy --version)
    step "$suite: $version; drowsy check on the installed config, as the service's user"
    in_root "$root" setpriv --reuid=drowsy --regid=drowsy --init-groups \
        sh -c 'drowsy check --config /etc/drowsy/drowsy.yml' >"$work/check-$suite.log" 2>&1 &&
        fail "check passed without PVE_TOKEN_SECRET"
    grep -q PVE_TOKEN_SECRET "$work/check-$suite.log" || fail "check did not name the missing secret: $(cat "$work/check-$suite.log")"
    # With the secrets file read as the unit reads it (EnvironmentFile=).
    in_root "$root" sh -c 'set -a; . /etc/drowsy/drowsy.env; exec setpriv --reuid=drowsy --regid=drowsy --init-groups drowsy check --config /etc/drowsy/drowsy.yml' \
        >"$work/check-$suite.log" 2>&1 || fail "drowsy check: $(cat "$work/check-$suite.log")"
    grep -q "/etc/drowsy/drowsy.yml: ok" "$work/check-$suite.log" || fail "check: $(cat "$work/check-$suite.log")"

    step "$suite: drowsy demo wakes a guest (as the service's user, loopback only)"
    # One request for app (which wakes its database first), without Accept:
    # text/html: it is held through the wake, then answered by the guest.
    in_root_offline "$root" setpriv --reuid=drowsy --regid=drowsy --init-groups bash -c '
        drowsy demo --listen 127.0.0.1:8080 --admin 127.0.0.1:9090 >/tmp/demo.log 2>&1 &
        demo=$!
        for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.1; done
        exec 3<>/dev/tcp/127.0.0.1/8080
        printf "GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n" >&3
        timeout 30 cat <&3 >/tmp/answer
        kill $demo 2>/dev/null || echo "the demo had stopped: $(cat /tmp/demo.log)"
        wait $demo 2>/dev/null || true
        cat /tmp/answer' >"$work/demo-$suite.log" 2>&1 || true
    head -1 "$work/demo-$suite.log" | grep -q "^HTTP/1.1 200" || fail "demo: $(cat "$work/demo-$suite.log")"
    grep -qi "^x-drowsy-wake:" "$work/demo-$suite.log" || fail "demo: the answer did not come through a wake"
    grep -q '"guest": *"app"' "$work/demo-$suite.log" || fail "demo: not the app guest: $(cat "$work/demo-$suite.log")"

    step "$suite: upgrade (reinstall) keeps an edited config and the state"
    echo "# edited by the admin" >>"$root/etc/drowsy/drowsy.yml"
    touch "$root/var/lib/drowsy/kept"
    in_root "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall /tmp/drowsy.deb >>"$work/install-$suite.log" 2>&1 ||
        { cat "$work/install-$suite.log" >&2; fail "reinstall on $suite"; }
    tail -1 "$root/etc/drowsy/drowsy.yml" | grep -q "edited by the admin" || fail "the upgrade replaced an edited config"
    expect_mode "$root" /etc/drowsy/drowsy.yml "640 root:drowsy"
    [ -e "$root/var/lib/drowsy/kept" ] || fail "the upgrade lost the state"

    step "$suite: apt remove keeps config, state and user"
    in_root "$root" env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q drowsy >>"$work/install-$suite.log" 2>&1 || fail "apt remove"
    [ ! -e "$root/usr/bin/drowsy" ] || fail "remove left the binary"
    [ -e "$root/etc/drowsy/drowsy.yml" ] || fail "remove took the config"
    [ -e "$root/var/lib/drowsy/kept" ] || fail "remove took the state"
    in_root "$root" getent passwd drowsy >/dev/null || fail "remove took the user"
    in_root "$root" dpkg-query -W -f='${db:Status-Abbrev}' drowsy | grep -q '^rc' || fail "not in state rc after remove"

    step "$suite: apt purge removes config and state"
    in_root "$root" env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q drowsy >>"$work/install-$suite.log" 2>&1 || fail "apt purge"
    [ ! -e "$root/etc/drowsy" ] || fail "purge left /etc/drowsy: $(ls -A "$root/etc/drowsy")"
    [ ! -e "$root/var/lib/drowsy" ] || fail "purge left /var/lib/drowsy"
    [ ! -e "$root/etc/systemd/system/multi-user.target.wants/drowsy.service" ] || fail "purge left the unit enabled"
    ! in_root "$root" dpkg-statoverride --list /etc/drowsy/drowsy.yml >/dev/null || fail "purge left the statoverride"
    in_root "$root" dpkg-query -W drowsy >/dev/null 2>&1 && fail "dpkg still knows drowsy after purge"
    step "$suite: ok"
}

for suite in $suites; do
    check_suite "$suite"
done
echo "deb-check: $(basename "$deb"): ok on $suites"
