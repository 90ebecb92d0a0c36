#!/usr/bin/env bash
# Admin-port flood (issue 14): N connections to the admin port, each sending a partial request
# ("GET /metrics HTTP/1.1", one header, never the blank line) and then nothing. Reports how many the
# gateway kept open right after the flood and after header_read_timeout, its RSS and open
# descriptors at each point, and whether the public listener and a fresh admin probe are served
# meanwhile. The gateway runs with the open-file limit of the issue (2,048), so a flood that took
# descriptors from the public side would show.
#
#   bash benches/load/admin_flood.sh                     # from anywhere; ~30 s with the defaults
#   GATEWAY_BIN=/path/to/older/companies-gateway BUILD=0 bash benches/load/admin_flood.sh
#
# Environment (defaults in brackets):
#   FLOOD_CONNS [5000]          admin connections opened by the attacker
#   PUBLIC_CONNS [500]          public keep-alive connections opened during the flood, one request
#                               each (a PATCH with a body that breaks the contract: a local 400, no
#                               upstream needed); they stay open until the end
#   NOFILE [2048]               ulimit -n (soft and hard) of the gateway
#   HEADER_READ_TIMEOUT [10s]   [limits] header_read_timeout of the gateway (the shipped default)
#   BUILD [1]                   1: cargo build --release --locked first
#   GATEWAY_BIN [target/release/companies-gateway]
#   OUT_DIR [target/load/admin-flood-<UTC timestamp>]   report.md and the gateway's log
# Sends traffic to 127.0.0.1 only; every wait is bounded.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
FLOOD_CONNS=${FLOOD_CONNS:-5000}
PUBLIC_CONNS=${PUBLIC_CONNS:-500}
NOFILE=${NOFILE:-2048}
HEADER_READ_TIMEOUT=${HEADER_READ_TIMEOUT:-10s}
BUILD=${BUILD:-1}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/companies-gateway}
OUT_DIR=${OUT_DIR:-$ROOT/target/load/admin-flood-$(date -u +%Y%m%dT%H%M%SZ)}

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for v in FLOOD_CONNS PUBLIC_CONNS NOFILE; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || { log "$v must be a positive integer"; exit 1; }
done
[[ $HEADER_READ_TIMEOUT =~ ^[0-9]+s$ ]] || { log "HEADER_READ_TIMEOUT must be whole seconds, e.g. 10s"; exit 1; }

if [ "$BUILD" = 1 ]; then
  log "cargo build --release --locked"
  (cd "$ROOT" && cargo build --release --locked --bin companies-gateway >&2)
fi
[ -x "$GATEWAY_BIN" ] || { log "no gateway binary at $GATEWAY_BIN"; exit 1; }
mkdir -p "$OUT_DIR"
TMP=$(mktemp -d)
GW_PID=
cleanup() {
  if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); ADMIN_PORT=$(free_port); DEAD_PORT=$(free_port)
cp "$GATEWAY_BIN" "$TMP/companies-gateway"
# admin.max_connections is left at its default (64), so that an older binary without the key runs
# the same config. The upstream is a closed port: the public requests are answered locally.
cat >"$TMP/gateway.toml" <<EOF
[listener]
addr = "127.0.0.1:$PORT"
[admin]
addr = "127.0.0.1:$ADMIN_PORT"
[upstream]
url = "https://localhost:$DEAD_PORT"
[runtime]
worker_threads = 1
[limits]
header_read_timeout = "$HEADER_READ_TIMEOUT"
[log]
level = "warn"
EOF
log "gateway: public :$PORT, admin :$ADMIN_PORT, ulimit -n $NOFILE, header_read_timeout $HEADER_READ_TIMEOUT"
(ulimit -n "$NOFILE"; exec env -i PATH="$PATH" "$TMP/companies-gateway" --config "$TMP/gateway.toml") \
  >"$OUT_DIR/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null || { log "gateway did not start"; cat "$OUT_DIR/gateway.log" >&2; exit 1; }

python3 - "$GW_PID" "$PORT" "$ADMIN_PORT" "$FLOOD_CONNS" "$PUBLIC_CONNS" "${HEADER_READ_TIMEOUT%s}" \
  "$NOFILE" "$ROOT/tests/data/shared/contract/examples/update-contact.request.json" "$GATEWAY_BIN" \
  >"$OUT_DIR/report.md" <<'EOF'
import errno, os, resource, select, socket, sys, time

pid, port, admin_port, n, n_public, hrt, nofile, _example, binary = sys.argv[1:]
pid, port, admin_port, n, n_public, hrt = int(pid), int(port), int(admin_port), int(n), int(n_public), float(hrt)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def status(key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # MB
    return float("nan")

def fds():
    return len(os.listdir(f"/proc/{pid}/fd"))

def still_open(socks):
    """How many of socks the gateway has not closed (no EOF, no reset)."""
    alive = 0
    for s in socks:
        try:
            data = s.recv(4096, socket.MSG_DONTWAIT)
            alive += data != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive

def admin_probe():
    """A fresh GET /healthz on the admin port: its status line, or why there is none."""
    try:
        with socket.create_connection(("127.0.0.1", admin_port), timeout=3) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data = s.recv(256)
            return data.split(b"\r\n")[0].decode() if data else "closed without an answer"
    except OSError as e:
        return f"error: {e.strerror or e}"

def public_requests(k):
    """k keep-alive public connections, one locally rejected PATCH each; returns (400s, errors, socks)."""
    body = b'{"notify":"yes"}'
    req = (b"PATCH /companies/v2/rs/1/contacts/2 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\n"
           b"X-Session-Token: s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    ok = errors = 0
    socks = []
    for _ in range(k):
        if errors >= 20 and ok == 0:
            errors = k - ok  # the listener is not answering: count the rest as failed
            break
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(req)
            head = s.recv(4096)
            if head.startswith(b"HTTP/1.1 400"):
                ok += 1
            else:
                errors += 1
            socks.append(s)
        except OSError:
            errors += 1
    return ok, errors, socks

rows = []
def row(what, socks):
    rows.append((what, still_open(socks), status("VmRSS"), fds()))

rows.append(("before the flood", 0, status("VmRSS"), fds()))
t0 = time.monotonic()
flood, refused = [], 0
# Non-blocking connects in batches, each batch given 2 s: a gateway that stops accepting (EMFILE)
# leaves connects hanging in a full backlog, which must not stall the run.
for start in range(0, n, 256):
    batch = []
    for _ in range(min(256, n - start)):
        s = socket.socket()
        s.setblocking(False)
        if s.connect_ex(("127.0.0.1", admin_port)) in (0, errno.EINPROGRESS):
            batch.append(s)
        else:
            s.close()
            refused += 1
    poller = select.poll()
    by_fd = {s.fileno(): s for s in batch}
    for fd in by_fd:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + 2.0
    while by_fd and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            s = by_fd.pop(fd, None)
            if s is None:
                continue
            poller.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                try:
                    s.send(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n")
                    flood.append(s)
                    continue
                except OSError:
                    pass
            s.close()
            refused += 1
    for s in by_fd.values():
        s.close()
        refused += 1
t_open = time.monotonic() - t0
time.sleep(0.5)
row(f"flood sent ({t_open:.1f} s to open)", flood)
probe_during = admin_probe()
ok, errors, public = public_requests(n_public)
row(f"+ {n_public} public keep-alive connections", flood)
# The last flood connection was opened at t0 + t_open: give it header_read_timeout and 2 s more.
wait = max(0.0, t0 + t_open + hrt + 2.0 - time.monotonic())
time.sleep(wait)
row(f"{time.monotonic() - t0 - t_open:.1f} s after the last flood connection (header_read_timeout {hrt:g} s)", flood)
probe_after = admin_probe()
peak = status("VmHWM")
alive_public = still_open(public)

print(f"## Admin-port flood\n")
print(f"`{binary}`, ulimit -n {nofile}, header_read_timeout {hrt:g} s, admin.max_connections default; "
      f"{n} admin connections, each `GET /metrics HTTP/1.1` + one header, never the blank line "
      f"({refused} did not connect within 2 s).\n")
print("| when | admin flood connections still open | gateway RSS MB | gateway open fds |")
print("|---|---:|---:|---:|")
for what, alive, rss, nfd in rows:
    print(f"| {what} | {alive} | {rss:.1f} | {nfd} |")
print(f"\n- peak RSS (VmHWM): {peak:.1f} MB")
print(f"- public listener during the flood: {ok} of {n_public} locally rejected PATCHes answered 400, "
      f"{errors} errors; {alive_public} of those keep-alive connections still open at the end "
      f"(an idle HTTP/1 keep-alive is closed after header_read_timeout)")
print(f"- a fresh admin GET /healthz during the flood: {probe_during}; after header_read_timeout: {probe_after}")
EOF
kill "$GW_PID" 2>/dev/null || true
wait "$GW_PID" 2>/dev/null || true
GW_PID=
{ echo; echo "gateway warnings and errors:"; grep -ciE 'warn|error' "$OUT_DIR/gateway.log" || true; } >>"$OUT_DIR/report.md"
grep -m3 -E 'lowered|accept failed' "$OUT_DIR/gateway.log" | sed 's/^/    /' >>"$OUT_DIR/report.md" || true
cat "$OUT_DIR/report.md"
log "report: $OUT_DIR/report.md"
