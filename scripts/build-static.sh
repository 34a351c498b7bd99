#!/usr/bin/env bash
# Static (musl) release binaries for x86_64 and aarch64 Linux, made on an
# x86_64 Debian box, and the aarch64 one tried under qemu-aarch64:
#
#   scripts/build-static.sh                  # both targets into target/dist/
#   scripts/build-static.sh aarch64          # one of them
#   DROWSY_STATIC_SKIP_BUILD=1 scripts/build-static.sh   # only the checks
#
# Tools: the rustup targets x86_64-unknown-linux-musl and
# aarch64-unknown-linux-musl (Rust's musl targets bring their own libc and
# start files), Debian's musl-tools (musl-gcc, for ring's C and assembly on
# x86_64), gcc-aarch64-linux-gnu (ring's C for aarch64, and the linker), and
# qemu-user for the check. That is the lightest way that works here: no zig,
# no cross containers; gcc only compiles ring's few files and drives the link.
set -euo pipefail
cd "$(dirname "$0")/.."

arches=${*:-x86_64 aarch64}
target_dir=${CARGO_TARGET_DIR:-target}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
dist=${DROWSY_DIST:-$target_dir/dist}
mkdir -p "$dist"

export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
export CC_aarch64_unknown_linux_musl=${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-aarch64-linux-gnu-gcc}

# `drowsy demo` in a network namespace of its own (loopback only, no port
# taken here), one request for app held through its wake (and its
# database's), answered by the guest.
demo_wake() {
    unshare --net --fork bash -c '
        ip link set lo up
        "$@" demo --listen 127.0.0.1:8080 --admin 127.0.0.1:9090 >/dev/null 2>&1 &
        demo=$!
        for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.1; done
        exec 3<>/dev/tcp/127.0.0.1/8080
        start=$(date +%s%N)
        printf "GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n" >&3
        answer=$(timeout 60 cat <&3)
        ms=$((($(date +%s%N) - start) / 1000000))
        kill $demo
        printf "%s\n" "$answer" | head -1 | grep -q "^HTTP/1.1 200" &&
            printf "%s\n" "$answer" | grep -qi "^x-drowsy-wake:" &&
            printf "%s\n" "$answer" | grep -q "\"guest\": *\"app\"" ||
            { echo "demo wake failed: $answer" >&2; exit 1; }
        echo "build-static: demo wake through $1: 200 from the app guest after ${ms} ms"' demo_wake "$@"
}

for arch in $arches; do
    triple=$arch-unknown-linux-musl
    out="$dist/drowsy-$version-$arch-linux"
    if [ -z "${DROWSY_STATIC_SKIP_BUILD:-}" ]; then
        rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
        start=$(date +%s)
        cargo build --release --locked --bin drowsy --target "$triple"
        echo "build-static: $triple built in $(($(date +%s) - start)) s"
    fi
    bin="$target_dir/$triple/release/drowsy"
    # The release profile keeps line tables for backtraces; the shipped file
    # does without them.
    strip_tool=strip
    [ "$arch" = aarch64 ] && strip_tool=aarch64-linux-gnu-strip
    "$strip_tool" -o "$out" "$bin"
    # Static: no program interpreter (ld.so) and no shared libraries.
    if readelf -l -d "$out" | grep -q "INTERP\|(NEEDED)"; then
        echo "build-static: $out is not static" >&2
        exit 1
    fi
    echo "build-static: $out: $(stat -c %s "$bin") bytes unstripped, $(stat -c %s "$out") stripped"
done

# The aarch64 binary, run on this x86_64 machine by qemu's user-mode
# emulator: --version, check on the example config, and a demo wake.
if [[ " $arches " == *" aarch64 "* ]]; then
    bin="$dist/drowsy-$version-aarch64-linux"
    run="qemu-aarch64 $bin"
    $run --version
    PVE_TOKEN_SECRET=x $run check --config config.example.yml >/dev/null
    echo "build-static: aarch64: check on config.example.yml: ok"
    demo_wake $run
fi
(cd "$dist" && sha256sum drowsy-"$version"-*-linux >SHA256SUMS)
echo "build-static: $dist/SHA256SUMS written"
