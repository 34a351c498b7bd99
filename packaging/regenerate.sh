#!/usr/bin/env bash
# Writes the shell completions and man pages the Debian package ships, from
# the command line's own definitions. Run it after changing a command or
# flag (tests/packaging.rs fails until the copies are current):
#   packaging/regenerate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin drowsy
bin="${CARGO_TARGET_DIR:-target}/debug/drowsy"
out=packaging/completions
mkdir -p "$out"
"$bin" completions bash >"$out/drowsy.bash"
"$bin" completions zsh >"$out/_drowsy"
"$bin" completions fish >"$out/drowsy.fish"
rm -rf packaging/man
"$bin" manpage --dir packaging/man
echo "wrote $out/ and packaging/man/"
