#!/usr/bin/env bash
# Instructions per request under callgrind: the gateway (release build) behind the same TLS nginx
# upstream, gateway config and request as run.sh, one keep-alive client connection. Counts are
# zeroed after a warm-up (TLS handshake to the upstream, pool, session cache filled), then N
# requests are sent one after the other and the whole process's instructions (Ir, every thread)
# are divided by N. Deterministic to a few hundred instructions, unlike CPU time on a shared box.
#
#   bash benches/load/callgrind.sh                       # target/release/companies-gateway
#   GATEWAY_BIN=/path/to/other/companies-gateway bash benches/load/callgrind.sh
#
# Environment: GATEWAY_BIN [target/release/companies-gateway], N [2000], WARMUP_N [300],
# CG_OUT [] a directory to keep the two dumps in (callgrind_annotate CG_OUT/forward.out).
# EXTRA_CONF [] a TOML file appended to the gateway's config, to price a feature against the same run
# without it (e.g. EXTRA_CONF=benches/load/conf/rate-limit.toml).
# SHARED [] set to 1: a redis-server started here (free loopback port, no persistence) is the
# gateway's `[shared]` store (with EXTRA_CONF's limits, shared ones), and each path also prints
# "<path>-store <commands/request> <command>=<calls> ..." from the store's INFO commandstats
# around the measured requests (the subscription's PINGs, one a second, are counted apart).
# Needs redis-server and redis-cli.
# Prints one line per path: "forward <Ir/request>" (valid PATCH, 200 from the upstream) and
# "reject <Ir/request>" (body breaking the contract, 400 answered locally). Needs valgrind, nginx,
# python3, openssl. 127.0.0.1 only; the temp dir is removed on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EXAMPLES="$ROOT/tests/data/shared/contract/examples"
HELPERS="$HERE/helpers.py"
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/companies-gateway}
export -n GATEWAY_BIN   # the gateway reads GATEWAY_* variables as config overrides
N=${N:-2000}
WARMUP_N=${WARMUP_N:-300}
ROUTE=/companies/v2/rs/1/contacts/2

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in valgrind callgrind_control nginx python3 openssl; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -x $GATEWAY_BIN ]] || die "$GATEWAY_BIN not found"

TMP=$(mktemp -d /tmp/gateway-callgrind.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The same certificates as run.sh: a CA and a leaf for localhost / 127.0.0.1, ECDSA P-256.
PKI="$TMP/pki"
mkdir -p "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=test-CA" -keyout "$PKI/ca.key" -out "$PKI/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
  -keyout "$PKI/leaf.key" -out "$PKI/leaf.csr" 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$PKI/leaf.ext"
openssl x509 -req -in "$PKI/leaf.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
  -days 2 -extfile "$PKI/leaf.ext" -out "$PKI/leaf.pem" 2>/dev/null

read -r -a P <<<"$(python3 "$HELPERS" ports 4)"
UP_H1=${P[0]} UP_H2=${P[1]} PORT=${P[2]} ADMIN=${P[3]}

wait_port() { # pid port name
  for _ in $(seq 300); do
    kill -0 "$1" 2>/dev/null || die "$3 exited at start-up (see $TMP)"
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  die "$3 did not listen on $2 within 30 s"
}

USER_LINE=""
[[ $EUID -eq 0 ]] && USER_LINE="user root;"
mkdir -p "$TMP/upstream"
python3 "$HELPERS" render "$HERE/conf/upstream-nginx.conf.in" "$TMP/upstream/nginx.conf" \
  "DIR=$TMP/upstream" "USER_LINE=$USER_LINE" "CERT=$PKI/leaf.pem" "KEY=$PKI/leaf.key" \
  "PORT_H1=$UP_H1" "PORT_H2=$UP_H2" \
  "RESPONSE=$(python3 "$HELPERS" nginx-string "$EXAMPLES/update-contact.response.json")"
nginx -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -e "$TMP/upstream/error.log" \
  -g 'daemon off;' >"$TMP/upstream/stdout.log" 2>&1 &
PIDS+=("$!")
wait_port "$!" "$UP_H1" upstream

CONF="$TMP/gateway.toml"
python3 "$HELPERS" render "$HERE/conf/gateway.toml.in" "$CONF" \
  "PORT=$PORT" "ADMIN_PORT=$ADMIN" "UPSTREAM_PORT=$UP_H1" "CA=$PKI/ca.pem" \
  "HTTP2=false" "CACHE_CAPACITY=100000" "VALID_TTL=60s"
if [[ -n ${EXTRA_CONF:-} ]]; then cat "$EXTRA_CONF" >>"$CONF"; fi
if [[ -n ${SHARED:-} ]]; then
  for tool in redis-server redis-cli; do command -v "$tool" >/dev/null || die "$tool not found"; done
  REDIS_PORT=$(python3 "$HELPERS" ports 1)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    >"$TMP/redis.log" 2>&1 &
  PIDS+=("$!")
  wait_port "$!" "$REDIS_PORT" redis-server
  head -c 32 /dev/urandom | base64 >"$TMP/key-secret"
  # timeout: valgrind slows the gateway ~50x, and a store operation timed out would be decided
  # locally instead (and not priced); the default 25 ms is for a gateway at full speed.
  printf '\n[shared]\nredis_url = "redis://127.0.0.1:%s/"\nkey_secret_file = "%s"\ntimeout = "2s"\n' \
    "$REDIS_PORT" "$TMP/key-secret" >>"$CONF"
fi
if ! "$GATEWAY_BIN" --check-config --config "$CONF" >/dev/null 2>&1; then
  # An older gateway without per-client caps: drop that section (caps off either way).
  python3 - "$CONF" <<'EOF'
import re, sys
p = sys.argv[1]
s = open(p).read()
open(p, "w").write(re.sub(r"\[limits\].*?(?=\n\[)", "", s, flags=re.S))
EOF
  "$GATEWAY_BIN" --check-config --config "$CONF" >/dev/null || die "gateway config is invalid"
  log "config without [limits] (the binary does not know its keys)"
fi

valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.%p" \
  "$GATEWAY_BIN" --config "$CONF" >"$TMP/gateway.log" 2>&1 &
GW=$!
PIDS+=("$GW")
wait_port "$GW" "$PORT" gateway

BEARER=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
SESSION=$(python3 "$HELPERS" jwt)

# send <body file> <count> <expected status>: one keep-alive connection, requests one by one.
send() {
  python3 - "$PORT" "$ROUTE" "$1" "$2" "$3" "$BEARER" "$SESSION" <<'EOF'
import http.client, sys
port, route, body_file, count, want, bearer, session = sys.argv[1:]
body = open(body_file, "rb").read()
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + bearer,
           "X-Session-Token": session}
c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
for _ in range(int(count)):
    c.request("PATCH", route, body=body, headers=headers)
    r = c.getresponse()
    r.read()
    if r.status != int(want):
        sys.exit(f"status {r.status}, wanted {want}")
c.close()
EOF
}

printf '{"notify":"yes"}' >"$TMP/invalid.json"
commandstats() { [[ -z ${SHARED:-} ]] || redis-cli -p "$REDIS_PORT" INFO commandstats >"$1"; }
# store_line name before after: the commands the store ran per request between the snapshots.
store_line() {
  python3 - "$1" "$2" "$3" "$N" <<'EOF'
import re, sys
name, before, after, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def calls(path):
    text = open(path).read()
    return {m[1]: int(m[2]) for m in re.finditer(r"^cmdstat_(\S+?):calls=(\d+)", text, re.M)}
b, a = calls(before), calls(after)
delta = {k: a[k] - b.get(k, 0) for k in a if a[k] != b.get(k, 0) and k != "info"}
ping = delta.pop("ping", 0)
detail = "".join(f" {k}={v}" for k, v in sorted(delta.items()))
print(f"{name}-store {sum(delta.values()) / n:.3f}{detail} (ping={ping}, the subscription's)")
EOF
}
measure() { # name body status
  send "$2" "$WARMUP_N" "$3"
  callgrind_control -z "$GW" >/dev/null 2>&1
  commandstats "$TMP/stats.before"
  send "$2" "$N" "$3"
  commandstats "$TMP/stats.after"
  rm -f "$TMP"/cg.*.*
  callgrind_control -d "$GW" >/dev/null 2>&1
  local dump
  dump=$(ls -t "$TMP"/cg.*.* | head -1)
  local ir
  [[ -z ${CG_OUT:-} ]] || { mkdir -p "$CG_OUT"; cp "$dump" "$CG_OUT/$1.out"; }
  ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  echo "$1 $(( ir / N ))"
  [[ -z ${SHARED:-} ]] || store_line "$1" "$TMP/stats.before" "$TMP/stats.after"
}
measure forward "$EXAMPLES/update-contact.request.json" 200
measure reject "$TMP/invalid.json" 400
