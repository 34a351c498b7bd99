#!/usr/bin/env bash
# Runs testssl.sh (Debian package `testssl.sh`) once against drowsy's HTTPS
# listener on loopback, with a throwaway ECDSA certificate for drowsy.test
# and a python3 http.server as the backend. The summary is in README.md,
# "Security".
#
#   bench/testssl.sh            # full output in $WORK/testssl.out (printed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v testssl >/dev/null; then
    apt-get install -y -qq --no-install-recommends testssl.sh >/dev/null
fi
cargo build --release --quiet --bin drowsy
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=drowsy.test -addext subjectAltName=DNS:drowsy.test \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
port=18443
backend=18099
cat >"$WORK/drowsy.yml" <<YAML
listen:
  https: 127.0.0.1:$port
  admin: off
tls:
  certificates:
    - {cert: cert.pem, key: key.pem}
  default_certificate: drowsy.test   # so testssl's probes without SNI see the certificate too
routes:
  site:
    host: drowsy.test
    backend: http://127.0.0.1:$backend
YAML
python3 -m http.server "$backend" --bind 127.0.0.1 >"$WORK/backend.log" 2>&1 &
PIDS+=($!)
target/release/drowsy --log-level warn run --config "$WORK/drowsy.yml" >"$WORK/drowsy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
timeout 900 testssl --ip 127.0.0.1 --quiet --color 0 --warnings off \
    "https://drowsy.test:$port" >"$WORK/testssl.out" 2>&1 || true
cat "$WORK/testssl.out"
echo "output kept in $WORK"
