#!/usr/bin/env bash
# One of two upstream addresses dies mid-run (issue 19, gateway.md §9). Two TLS nginx upstreams,
# on 127.0.0.1 and 127.0.0.2, stand for one host's two addresses (the gateway's
# `upstream.resolve`; the certificate names localhost and both addresses, TLS checks `localhost`).
# wrk drives the gateway for DURATION seconds; at half time the second nginx is killed (SIGKILL,
# master and worker: in-flight requests are reset, new connects refused). Reports the client
# errors before and after the first ejection, and upstream attempts per request during the outage.
#
#   bash benches/load/outage.sh                 # PATCH (the validated route), 20 s
#   METHOD=GET bash benches/load/outage.sh      # GET, which may also be retried after a reset
#
# Environment: GATEWAY_BIN [target/release/companies-gateway], DURATION [20], CONNS [32],
# METHOD [PATCH], OUTLIER_FAILURES [5], RETRY_BUDGET [0.2]. Needs nginx, wrk, python3, openssl.
# 127.0.0.1 and 127.0.0.2 only; the temp dir is removed on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EXAMPLES="$ROOT/../shared/contract/examples"
HELPERS="$HERE/helpers.py"
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/companies-gateway}
export -n GATEWAY_BIN   # the gateway reads GATEWAY_* variables as config overrides
DURATION=${DURATION:-20}
CONNS=${CONNS:-32}
METHOD=${METHOD:-PATCH}
OUTLIER_FAILURES=${OUTLIER_FAILURES:-5}
RETRY_BUDGET=${RETRY_BUDGET:-0.2}
ROUTE=/companies/v2/rs/1/contacts/2

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in nginx wrk python3 openssl; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -x $GATEWAY_BIN ]] || die "$GATEWAY_BIN not found (cargo build --release --locked)"

TMP=$(mktemp -d /tmp/gateway-outage.XXXXXX)
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

PKI="$TMP/pki"
mkdir -p "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=test-CA" -keyout "$PKI/ca.key" -out "$PKI/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
  -keyout "$PKI/leaf.key" -out "$PKI/leaf.csr" 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2" \
  >"$PKI/leaf.ext"
openssl x509 -req -in "$PKI/leaf.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
  -days 2 -extfile "$PKI/leaf.ext" -out "$PKI/leaf.pem" 2>/dev/null

read -r -a P <<<"$(python3 "$HELPERS" ports 6)"
UP_A=${P[0]} UP_A2=${P[1]} UP_B=${P[2]} UP_B2=${P[3]} PORT=${P[4]} ADMIN=${P[5]}

wait_port() { # pid host port name
  for _ in $(seq 300); do
    kill -0 "$1" 2>/dev/null || die "$4 exited at start-up (see $TMP)"
    (exec 3<>"/dev/tcp/$2/$3") 2>/dev/null && return 0
    sleep 0.1
  done
  die "$4 did not listen on $2:$3 within 30 s"
}

USER_LINE=""
[[ $EUID -eq 0 ]] && USER_LINE="user root;"
RESPONSE=$(python3 "$HELPERS" nginx-string "$EXAMPLES/update-contact.response.json")
start_upstream() { # name ip port port2
  mkdir -p "$TMP/$1"
  python3 "$HELPERS" render "$HERE/conf/upstream-nginx.conf.in" "$TMP/$1/nginx.conf" \
    "DIR=$TMP/$1" "USER_LINE=$USER_LINE" "CERT=$PKI/leaf.pem" "KEY=$PKI/leaf.key" \
    "PORT_H1=$3" "PORT_H2=$4" "RESPONSE=$RESPONSE"
  sed -i "s/listen 127.0.0.1:/listen $2:/" "$TMP/$1/nginx.conf"
  nginx -p "$TMP/$1" -c "$TMP/$1/nginx.conf" -e "$TMP/$1/error.log" \
    -g 'daemon off;' >"$TMP/$1/stdout.log" 2>&1 &
  PIDS+=("$!")
  wait_port "$!" "$2" "$3" "upstream $1"
}
start_upstream a 127.0.0.1 "$UP_A" "$UP_A2"
A_PID=${PIDS[-1]}
start_upstream b 127.0.0.2 "$UP_B" "$UP_B2"
B_PID=${PIDS[-1]}

CONF="$TMP/gateway.toml"
python3 "$HELPERS" render "$HERE/conf/gateway.toml.in" "$CONF" \
  "PORT=$PORT" "ADMIN_PORT=$ADMIN" "UPSTREAM_PORT=$UP_A" "CA=$PKI/ca.pem" \
  "HTTP2=false" "CACHE_CAPACITY=100000" "VALID_TTL=60s"
python3 - "$CONF" "$UP_A" "$UP_B" "$OUTLIER_FAILURES" "$RETRY_BUDGET" <<'EOF'
import sys
path, a, b, failures, budget = sys.argv[1:]
s = open(path).read()
extra = (f'resolve = ["127.0.0.1:{a}", "127.0.0.2:{b}"]\n'
         f'outlier_failures = {failures}\nretry_budget = {budget}\n')
open(path, "w").write(s.replace("[upstream]\n", "[upstream]\n" + extra, 1))
EOF
"$GATEWAY_BIN" --check-config --config "$CONF" >/dev/null || die "gateway config is invalid"
"$GATEWAY_BIN" --config "$CONF" >"$TMP/gateway.log" 2>&1 &
GW=$!
PIDS+=("$GW")
wait_port "$GW" 127.0.0.1 "$PORT" gateway

METRICS="http://127.0.0.1:$ADMIN/metrics"
snapshot() { # the counters this report needs, from one scrape, on one line
  python3 - "$METRICS" <<'PY'
import re, sys, urllib.request
body = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
def total(name, labels=""):
    t = 0.0
    for line in body.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == name and labels in (m.group(2) or ""):
            t += float(m.group(3))
    return int(t)
print(total("gateway_requests_total"), total("gateway_requests_total", 'status="5'),
      total("gateway_upstream_retries_total"),
      total("gateway_upstream_retries_total", 'reason="not_sent"'),
      total("gateway_upstream_ejections_total"),
      total("gateway_upstream_retry_budget_exhausted_total"))
PY
}

export LOAD_BODY_FILE="$EXAMPLES/update-contact.request.json"
export LOAD_BEARER
LOAD_BEARER=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
export LOAD_SESSION
LOAD_SESSION=$(python3 "$HELPERS" jwt)
WRK_ARGS=(-t1 "-c$CONNS" "-d${DURATION}s" --latency)
if [[ $METHOD == PATCH ]]; then
  WRK_ARGS+=(-s "$HERE/lua/patch.lua")
  WRK_URL="http://127.0.0.1:$PORT$ROUTE"
else
  # An unknown route is forwarded as it is: a GET the gateway may retry after a reset.
  WRK_URL="http://127.0.0.1:$PORT/companies/v2/rs/1"
fi

log "warm-up"
WARM=(-t1 "-c$CONNS" -d2s)
[[ $METHOD != PATCH ]] || WARM+=(-s "$HERE/lua/patch.lua")
wrk "${WARM[@]}" "$WRK_URL" >/dev/null
read -r -a S0 <<<"$(snapshot)"
log "after the warm-up: $(python3 "$HELPERS" metric "$METRICS" gateway_upstream_ejections_total) ejection(s)"
log "load: $METHOD for ${DURATION}s, upstream b (127.0.0.2) killed at $((DURATION / 2))s"
wrk "${WRK_ARGS[@]}" "$WRK_URL" >"$TMP/wrk.txt" 2>&1 &
WRK=$!
sleep $((DURATION / 2))
read -r -a S1 <<<"$(snapshot)"
sleep 1.2   # nginx flushes its buffered log every second
log "served before the kill: a $(wc -l <"$TMP/a/conns.log"), b $(wc -l <"$TMP/b/conns.log") requests"
read -r -a S1 <<<"$(snapshot)"
# SIGKILL to the master and its worker, by process id: the address dies as a host would.
for pid in $(pgrep -P "$B_PID") "$B_PID"; do kill -KILL "$pid" 2>/dev/null || true; done
KILLED_AT=$(date +%s.%N)
# The first ejection, and the client errors up to it.
S_EJECT=()
for _ in $(seq 200); do
  read -r -a S <<<"$(snapshot)"
  if [[ ${S[4]} != "${S1[4]}" ]]; then S_EJECT=("${S[@]}"); break; fi
  sleep 0.05
done
wait "$WRK" || true
read -r -a S2 <<<"$(snapshot)"

python3 - "$TMP/wrk.txt" "$KILLED_AT" "$OUTLIER_FAILURES" "$RETRY_BUDGET" "$METHOD" \
  "${S0[*]}" "${S1[*]}" "${S_EJECT[*]:-}" "${S2[*]}" <<'EOF'
import re, sys
wrk_path, killed_at, failures, budget, method, s0, s1, se, s2 = sys.argv[1:]
def nums(s): return [float(x) for x in s.split()] if s.strip() else None
s0, s1, se, s2 = nums(s0), nums(s1), nums(se), nums(s2)
text = open(wrk_path).read()
non2xx = int((re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text) or [0, 0])[1])
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
sock = sum(int(x) for x in m.groups()) if m else 0
total = int((re.search(r"(\d+) requests in", text) or [0, 0])[1])
def errors(a, b): return int(b[1] - a[1])  # 5xx answers (a client gone at wrk's end is a 499)
print(f"# One of two upstream addresses dies mid-run ({method})\n")
print(f"| figure | value |\n| --- | --- |")
print(f"| client requests (wrk) | {total} |")
print(f"| client errors (non-2xx + socket errors, wrk) | {non2xx + sock} |")
print(f"| 5xx before the kill | {errors(s0, s1)} |")
if se:
    print(f"| 5xx from the kill to the first ejection (target <= {failures}, all retried) | {errors(s1, se)} |")
    print(f"| 5xx after the first ejection (target 0) | {errors(se, s2)} |")
else:
    print("| first ejection | none seen within 10 s |")
reqs = s2[0] - s1[0]
retries = s2[2] - s1[2]
print(f"| requests during the outage (kill to end) | {int(reqs)} |")
print(f"| retries during the outage (not_sent) | {int(retries)} ({int(s2[3] - s1[3])}) |")
print(f"| upstream attempts per request during the outage (target <= {1 + float(budget)}) | {(reqs + retries) / reqs:.4f} |" if reqs else "| attempts per request | no requests |")
print(f"| ejections | {int(s2[4] - s0[4])} |")
print(f"| retries refused by the budget | {int(s2[5] - s0[5])} |")
EOF
echo
echo "Upstream errors by kind (whole run) and addresses at the end:"
python3 - "$METRICS" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
print("\n".join(l for l in body.splitlines()
                if l.startswith(("gateway_upstream_errors_total", "gateway_upstream_endpoints"))))
PY
