#!/usr/bin/env bash
# Runs each fuzz target of fuzz/ for a bounded time (see bench/README.md,
# "Fuzzing"). Needs a nightly toolchain and cargo-fuzz
# (`rustup toolchain install nightly`, `cargo install cargo-fuzz`).
#
#   bench/fuzz.sh [TARGET...]        default: every target
#   FUZZ_SECS=180                    seconds per target
#
# Corpora grow in fuzz/corpus/TARGET (not committed; fuzz/seeds/TARGET
# holds the committed starting inputs), crashes land in
# fuzz/artifacts/TARGET, logs in fuzz/logs/TARGET.log. Exits non-zero when
# any target crashed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

secs="${FUZZ_SECS:-180}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(config authority headers upid guest_net loading_page fast_request fast_response chunked differential minecraft)
fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
rustup toolchain list | grep -q '^nightly' || { echo "a nightly toolchain is missing: rustup toolchain install nightly" >&2; exit 1; }

mkdir -p fuzz/logs
cargo +nightly fuzz build >/dev/null || exit 1
failed=0
printf '%-13s %8s %12s %10s %9s  %s\n' target seconds executions exec/s corpus result
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
    log="fuzz/logs/$t.log"
    if timeout $((secs + 120)) cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -max_len=8192 -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        result=clean
    else
        result="CRASH (see $log and fuzz/artifacts/$t)"
        failed=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    printf '%-13s %8s %12s %10s %9s  %s\n' "$t" "$secs" "${runs:-?}" "${rate:-?}" "$corpus" "$result"
done
exit $failed
