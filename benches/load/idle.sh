#!/usr/bin/env bash
# Memory per idle keep-alive connection: a load-harness scenario beside run.sh.
#
#   bash benches/load/idle.sh                       # 10,000 plain HTTP/1.1 connections
#   IDLE_CONNS=2000 MODES="h1 h2 tls" bash benches/load/idle.sh
#
# For each mode, a fresh gateway (one worker, pinned to core PROXY_CPU, the TLS nginx upstream of
# run.sh on core LOAD_CPU) serves one request; its VmRSS is the baseline. Then idle.py opens
# IDLE_CONNS connections (from 64 loopback source addresses), sends one valid PATCH on each, reads
# every answer and leaves them open; after SETTLE seconds VmRSS is read again:
#   KB per connection = (VmRSS with N idle connections - VmRSS with 0) / N.
# Modes: h1 (plain HTTP/1.1), h2 (h2c, prior knowledge), tls (HTTP/1.1 over TLS 1.3).
# header_read_timeout and idle_timeout are raised to 300 s so that no connection is closed while
# the others are being opened (the defaults close an idle HTTP/1 connection after 10 s).
#
# Environment (defaults in brackets):
#   IDLE_CONNS [10000]  connections per mode (at most 100,000; RLIMIT_NOFILE is raised to fit)
#   MODES ["h1"]        any of h1 h2 tls
#   SETTLE [4]          seconds to wait before each RSS reading
#   BUILD [1]           1: cargo build --release --locked first
#   GATEWAY_BIN [target/release/companies-gateway]
#   PROXY_CPU [0] LOAD_CPU [1]
#   OUT [target/load/idle-<UTC timestamp>.md]  the report (also printed)
# Needs nginx, openssl, python3, taskset. Loopback only; every wait is bounded.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EXAMPLES="$ROOT/tests/data/shared/contract/examples"
REQUEST_BODY="$EXAMPLES/update-contact.request.json"
RESPONSE_BODY="$EXAMPLES/update-contact.response.json"
HELPERS="$HERE/helpers.py"
ROUTE=/companies/v2/rs/1/contacts/2

IDLE_CONNS=${IDLE_CONNS:-10000}
MODES=${MODES:-h1}
SETTLE=${SETTLE:-4}
BUILD=${BUILD:-1}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/companies-gateway}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-$ROOT/target/load/idle-$(date -u +%Y%m%dT%H%M%SZ).md}
# The gateway reads GATEWAY_* variables as config overrides: keep ours out of its environment.
export -n GATEWAY_BIN

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $IDLE_CONNS =~ ^[0-9]+$ && $IDLE_CONNS -gt 0 && $IDLE_CONNS -le 100000 ]] \
  || die "IDLE_CONNS must be in 1..100000 (got '$IDLE_CONNS')"
for m in $MODES; do
  [[ $m == h1 || $m == h2 || $m == tls ]] || die "unknown mode '$m' (h1, h2, tls)"
done
for tool in nginx openssl python3 taskset; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
if [[ $BUILD == 1 ]]; then
  log "cargo build --release --locked"
  (cd "$ROOT" && cargo build --release --locked)
fi
[[ -x $GATEWAY_BIN ]] || die "$GATEWAY_BIN not found (build it, or set GATEWAY_BIN)"

# Every connection is a descriptor on both sides: the gateway raises its own limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= IDLE_CONNS + 256 )) || die "ulimit -n is $(ulimit -n); need $(( IDLE_CONNS + 256 ))"

TMP=$(mktemp -d /tmp/gateway-idle.XXXXXX)
STARTED_PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${STARTED_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${STARTED_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.1
  done
  for pid in "${STARTED_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp "$GATEWAY_BIN" "$TMP/companies-gateway"
GATEWAY="$TMP/companies-gateway"

PKI="$TMP/pki"
mkdir -p "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=test-CA" -keyout "$PKI/ca.key" -out "$PKI/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
  -keyout "$PKI/leaf.key" -out "$PKI/leaf.csr" 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$PKI/leaf.ext"
openssl x509 -req -in "$PKI/leaf.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
  -days 2 -extfile "$PKI/leaf.ext" -out "$PKI/leaf.pem" 2>/dev/null
CA="$PKI/ca.pem"

BEARER=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
SESSION=$(python3 "$HELPERS" jwt)
read -r -a P <<<"$(python3 "$HELPERS" ports 4)"
UP_H1=${P[0]} UP_H2=${P[1]} PORT=${P[2]} ADMIN_PORT=${P[3]}

wait_port() { # pid port name
  for _ in $(seq 100); do
    kill -0 "$1" 2>/dev/null || die "$3 exited at start-up (see $TMP)"
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$3 did not listen on $2 within 10 s"
}

USER_LINE=""
[[ $EUID -eq 0 ]] && USER_LINE="user root;"
mkdir -p "$TMP/upstream"
python3 "$HELPERS" render "$HERE/conf/upstream-nginx.conf.in" "$TMP/upstream/nginx.conf" \
  "DIR=$TMP/upstream" "USER_LINE=$USER_LINE" "CERT=$PKI/leaf.pem" "KEY=$PKI/leaf.key" \
  "PORT_H1=$UP_H1" "PORT_H2=$UP_H2" "RESPONSE=$(python3 "$HELPERS" nginx-string "$RESPONSE_BODY")"
taskset -c "$LOAD_CPU" nginx -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" \
  -e "$TMP/upstream/error.log" -g 'daemon off;' >"$TMP/upstream/stdout.log" 2>&1 &
STARTED_PIDS+=("$!")
wait_port "$!" "$UP_H1" upstream

{
  echo "## Memory per idle keep-alive connection"
  echo
  echo "$("$GATEWAY" --version 2>/dev/null | head -1), $(date -u +%Y-%m-%dT%H:%M:%SZ), IDLE_CONNS=$IDLE_CONNS, one worker thread, each connection idle after one forwarded PATCH (200)."
  echo
  echo "| mode | connections | 2xx | RSS with 0 (MB) | RSS with N (MB) | peak RSS (MB) | **KB per idle connection** | open after settle (sampled) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
} >"$TMP/report.md"

for mode in $MODES; do
  dir="$TMP/gateway-$mode"
  mkdir -p "$dir"
  python3 "$HELPERS" render "$HERE/conf/gateway.toml.in" "$dir/gateway.toml" \
    "PORT=$PORT" "ADMIN_PORT=$ADMIN_PORT" "UPSTREAM_PORT=$UP_H1" "CA=$CA" \
    "HTTP2=false" "CACHE_CAPACITY=100000" "VALID_TTL=60s"
  # Hold the connections open for as long as the run takes.
  sed -i 's/^\[runtime\]/[limits]\nheader_read_timeout = "300s"\nidle_timeout = "300s"\n\n[runtime]/' "$dir/gateway.toml"
  if [[ $mode == tls ]]; then
    sed -i "s|^\\[listener\\]|[listener]\ntls_cert = \"$PKI/leaf.pem\"\ntls_key = \"$PKI/leaf.key\"|" "$dir/gateway.toml"
  fi
  "$GATEWAY" --check-config --config "$dir/gateway.toml" >/dev/null || die "$dir/gateway.toml is invalid"
  taskset -c "$PROXY_CPU" "$GATEWAY" --config "$dir/gateway.toml" >"$dir/stdout.log" 2>&1 &
  gw=$!
  STARTED_PIDS+=("$gw")
  wait_port "$gw" "$PORT" "gateway ($mode)"
  log "$mode: $IDLE_CONNS idle connections"
  result=$(taskset -c "$LOAD_CPU" timeout 900 python3 "$HERE/idle.py" --pid "$gw" --port "$PORT" \
    --n "$IDLE_CONNS" --mode "$mode" --ca "$CA" --settle "$SETTLE" --path "$ROUTE" \
    --body "$REQUEST_BODY" --bearer "$BEARER" --session "$SESSION") || die "idle.py failed ($mode)"
  log "$mode: $result"
  python3 - "$result" >>"$TMP/report.md" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
ok = sum(v for k, v in r["statuses"].items() if k.startswith("2"))
mb = lambda kb: f"{kb / 1024:.1f}"
print(f"| {r['mode']} | {r['n']} | {ok} | {mb(r['base_rss_kb'])} | {mb(r['held_rss_kb'])} | "
      f"{mb(r['held_hwm_kb'])} | **{r['kb_per_conn']:.1f}** | {r['alive_sampled']} |")
EOF
  kill -TERM "$gw" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$gw" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$gw" 2>/dev/null || true
  wait "$gw" 2>/dev/null || true
  [[ ! -s $dir/stdout.log ]] || log "$mode: the gateway logged: $(head -c 300 "$dir/stdout.log")"
done

mkdir -p "$(dirname "$OUT")"
cp "$TMP/report.md" "$OUT"
cat "$OUT"
log "report: $OUT"
