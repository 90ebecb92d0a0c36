#!/usr/bin/env bash
# Fairness scenario (issue 14): one greedy client from 127.0.0.1 against a legitimate one from
# 127.0.0.2, with the per-client caps at their defaults (max_connections_per_client 256,
# max_concurrent_requests_per_client 128).
#
#   bash benches/load/fairness.sh        # from anywhere; about 1.5 minutes
#
# Two attacks, each on a fresh gateway, while 127.0.0.2 sends valid PATCHes (open loop, a new
# connection per request, so accept is measured too):
#   (a) 600 reconnecting slow-header connections, [limits] max_connections = 500
#   (b) 1,024 connections each stalling a 64 KiB body, [limits] max_concurrent_requests = 1024
# Target for 127.0.0.2: >= 99% 2xx and p99 < 50 ms.
#
# Environment (defaults in brackets):
#   SECONDS_LEGIT [20]    seconds of legitimate traffic per attack (the attack starts 3 s before)
#   RATE [40]             legitimate requests per second
#   PER_CLIENT [default]  "off": set both per-client caps to 0 (the control run, without the fix)
#   BUILD [1]             cargo build --release --locked first
#   GATEWAY_BIN [target/release/companies-gateway]
#   OUT_DIR [target/load/fairness-<UTC timestamp>]   report.md and the raw JSON
# Needs nginx (the TLS upstream), openssl, python3. Loopback only; every loop is bounded.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EXAMPLES="$ROOT/tests/data/shared/contract/examples"
SECONDS_LEGIT=${SECONDS_LEGIT:-20}
RATE=${RATE:-40}
PER_CLIENT=${PER_CLIENT:-default}
BUILD=${BUILD:-1}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/companies-gateway}
OUT_DIR=${OUT_DIR:-$ROOT/target/load/fairness-$(date -u +%Y%m%dT%H%M%SZ)}
HELPERS="$HERE/helpers.py"
CLIENTS="$HERE/fairness.py"
ROUTE=/companies/v2/rs/1/contacts/2

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in nginx openssl python3; do command -v "$tool" >/dev/null || die "$tool not found"; done
[[ $BUILD != 1 ]] || (cd "$ROOT" && cargo build --release --locked)
[[ -x $GATEWAY_BIN ]] || die "$GATEWAY_BIN not found"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= 4096 )) || die "ulimit -n is $(ulimit -n); need at least 4096"

mkdir -p "$OUT_DIR"
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp "$GATEWAY_BIN" "$TMP/companies-gateway"

# Certificates for the upstream, as run.sh mints them.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=test-CA" -keyout "$TMP/ca.key" -out "$TMP/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
  -keyout "$TMP/leaf.key" -out "$TMP/leaf.csr" 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$TMP/leaf.ext"
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
  -days 2 -extfile "$TMP/leaf.ext" -out "$TMP/leaf.pem" 2>/dev/null

read -r -a P <<<"$(python3 "$HELPERS" ports 4)"
UP_H1=${P[0]} UP_H2=${P[1]} GW_PORT=${P[2]} GW_ADMIN=${P[3]}
BEARER=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
SESSION=$(python3 "$HELPERS" jwt)

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
  "DIR=$TMP/upstream" "USER_LINE=$USER_LINE" "CERT=$TMP/leaf.pem" "KEY=$TMP/leaf.key" \
  "PORT_H1=$UP_H1" "PORT_H2=$UP_H2" \
  "RESPONSE=$(python3 "$HELPERS" nginx-string "$EXAMPLES/update-contact.response.json")"
nginx -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -e "$TMP/upstream/error.log" \
  -g 'daemon off;' >"$TMP/upstream/stdout.log" 2>&1 &
PIDS+=("$!")
wait_port "$!" "$UP_H1" upstream

# run_attack NAME LIMITS_LINES ATTACK ATTACK_CONNS
run_attack() {
  local name=$1 limits=$2 kind=$3 conns=$4 dir="$TMP/$1"
  mkdir -p "$dir"
  local caps=""
  if [[ $PER_CLIENT == off ]]; then
    caps=$'max_connections_per_client = 0\nmax_concurrent_requests_per_client = 0'
  fi
  cat >"$dir/gateway.toml" <<EOF
[listener]
addr = "127.0.0.1:$GW_PORT"
[admin]
addr = "127.0.0.1:$GW_ADMIN"
[upstream]
url = "https://localhost:$UP_H1"
ca_file = "$TMP/ca.pem"
[runtime]
worker_threads = 1
[limits]
$limits
$caps
[log]
level = "warn"
EOF
  "$TMP/companies-gateway" --config "$dir/gateway.toml" >"$dir/gateway.log" 2>&1 &
  local gw=$!
  PIDS+=("$gw")
  wait_port "$gw" "$GW_PORT" gateway
  log "$name: $conns greedy connections from 127.0.0.1 ($kind), then $RATE req/s from 127.0.0.2"
  timeout $((SECONDS_LEGIT + 30)) python3 "$CLIENTS" "$kind" 127.0.0.1 "$GW_PORT" --from 127.0.0.1 \
    --conns "$conns" --seconds $((SECONDS_LEGIT + 5)) --path "$ROUTE" \
    --bearer "$BEARER" --session "$SESSION" >"$OUT_DIR/$name.attack.json" &
  local attack=$!
  PIDS+=("$attack")
  sleep 3
  timeout $((SECONDS_LEGIT + 30)) python3 "$CLIENTS" legit 127.0.0.1 "$GW_PORT" --from 127.0.0.2 \
    --rate "$RATE" --seconds "$SECONDS_LEGIT" --path "$ROUTE" --bearer "$BEARER" \
    --session "$SESSION" --body "$EXAMPLES/update-contact.request.json" >"$OUT_DIR/$name.legit.json"
  wait "$attack" || true
  grep -c "over limits.max_connections_per_client" "$dir/gateway.log" >"$OUT_DIR/$name.closed-log-lines" || true
  cp "$dir/gateway.log" "$OUT_DIR/$name.gateway.log"
  kill -TERM "$gw" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$gw" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$gw" 2>/dev/null || true
}

run_attack a-slow-headers "max_connections = 500" slow-headers 600
run_attack b-stalled-bodies "max_concurrent_requests = 1024" stalled-bodies 1024

python3 - "$OUT_DIR" "$PER_CLIENT" "$RATE" "$SECONDS_LEGIT" <<'EOF' | tee "$OUT_DIR/report.md"
import json, sys
out, per_client, rate, secs = sys.argv[1:5]
print(f"# Fairness (per-client caps: {per_client}; legit {rate} req/s for {secs} s from 127.0.0.2)\n")
print("| attack from 127.0.0.1 | legit sent | 2xx | 2xx share | other statuses | errors | p50 ms | p99 ms | max ms | greedy conns opened | greedy closed unanswered | greedy answers |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
ok = True
for name, label in (("a-slow-headers", "(a) 600 slow-header conns, max_connections 500"),
                    ("b-stalled-bodies", "(b) 1,024 stalled 64 KiB bodies, max_concurrent_requests 1024")):
    legit = json.load(open(f"{out}/{name}.legit.json"))
    attack = json.load(open(f"{out}/{name}.attack.json"))
    other = {k[7:]: v for k, v in legit.items() if k.startswith("status_") and not k.startswith("status_2")}
    answers = {k[7:]: v for k, v in attack.items() if k.startswith("status_")}
    errors = legit["errors"] + legit["connect_errors"]
    print(f"| {label} | {legit['sent']} | {legit['ok_2xx']} | {legit['ok_share']:.2%} | {other or '-'} | {errors} "
          f"| {legit['p50_ms']} | {legit['p99_ms']} | {legit['max_ms']} | {attack['connections']} "
          f"| {attack['closed_unanswered']} | {answers or '-'} |")
    ok &= legit["ok_share"] is not None and legit["ok_share"] >= 0.99 and legit["p99_ms"] is not None and legit["p99_ms"] < 50
print(f"\nTarget (>= 99% 2xx and p99 < 50 ms for 127.0.0.2 in both): {'met' if ok else 'NOT met'}")
EOF
log "report: $OUT_DIR/report.md"
