#!/usr/bin/env bash
# Reload under load: a load-harness scenario beside run.sh, the same one tests/reload.rs runs.
#
#   bash benches/load/reload.sh                        # release build, 20 reloads
#   RELOADS=100 HOLD_MS=300 bash benches/load/reload.sh
#
# The real binary serves a steady request loop on one HTTP/1.1 keep-alive connection and one h2
# connection (each sending its next request when the last one's response has ended, so the load
# follows the gateway's speed) against a TLS mock upstream, while the config file and the OpenAPI
# document are rewritten and SIGHUP sent RELOADS times, alternating enforce/report mode,
# max_body_bytes and the document. The scenario fails on any failed request, or a response that
# does not follow the configuration in force while it ran. It reports:
#   requests          all requests, by protocol
#   during_reload     requests that started between a rewrite and the reload being seen done
#                     (gateway_config_reloads_total on the admin port)
#   p99 during reload / steady   p99 latency of those requests / of the others, in ms
#   reload done       from the rewrite to the reload being seen done (median, max), in ms
# The test binary itself is a debug build (it only drives the load); the gateway is the release
# binary unless GATEWAY_BIN says otherwise.
#
# Environment (defaults in brackets):
#   RELOADS [20]   HOLD_MS [150]   steady time under each configuration
#   BUILD [1]      1: cargo build --release --locked first
#   GATEWAY_BIN [target/release/companies-gateway]
#   OUT [target/load/reload-<UTC timestamp>.md]  the report (also printed)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RELOADS=${RELOADS:-20}
HOLD_MS=${HOLD_MS:-150}
BUILD=${BUILD:-1}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/companies-gateway}
OUT=${OUT:-$ROOT/target/load/reload-$(date -u +%Y%m%dT%H%M%SZ).md}
# The gateway reads GATEWAY_* variables as config overrides: keep ours out of its environment.
export -n GATEWAY_BIN

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $RELOADS =~ ^[0-9]+$ && $RELOADS -ge 3 ]] || die "RELOADS must be at least 3"
[[ $HOLD_MS =~ ^[0-9]+$ ]] || die "HOLD_MS must be a number of milliseconds"
if [[ $BUILD == 1 ]]; then
  log "cargo build --release --locked"
  (cd "$ROOT" && cargo build --release --locked)
fi
[[ -x $GATEWAY_BIN ]] || die "$GATEWAY_BIN not found (build it, or set GATEWAY_BIN)"

TMP=$(mktemp -d /tmp/gateway-reload.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cp "$GATEWAY_BIN" "$TMP/companies-gateway"

log "$RELOADS reloads under load"
(cd "$ROOT" && RELOAD_BENCH_BIN="$TMP/companies-gateway" RELOAD_BENCH_RELOADS="$RELOADS" \
  RELOAD_BENCH_HOLD_MS="$HOLD_MS" timeout 1800 cargo test --locked --test reload \
  sighup_twenty_times_under_steady_http1_and_h2_traffic_loses_no_request -- --nocapture \
  >"$TMP/test.log" 2>&1) || { cat "$TMP/test.log" >&2; die "the scenario failed"; }
line=$(grep -o 'reload-figures: .*' "$TMP/test.log" | tail -1)
[[ -n $line ]] || { cat "$TMP/test.log" >&2; die "no figures in the output"; }

mkdir -p "$(dirname "$OUT")"
python3 - "$line" "$("$TMP/companies-gateway" --version 2>/dev/null | head -1)" >"$OUT" <<'PY'
import sys
kv = dict(p.split("=", 1) for p in sys.argv[1].split()[1:])
print("## Reload under load")
print()
print(f"{sys.argv[2]}, {kv['reloads']} reloads (SIGHUP after rewriting the config and the document), "
      "one HTTP/1.1 keep-alive and one h2 connection in a closed loop.")
print()
print("| requests | HTTP/1.1 | h2 | failed | started during a reload | p99 during a reload (ms) "
      "| p99 steady (ms) | reload done, median / max (ms) |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
print(f"| {kv['requests']} | {kv['http1']} | {kv['h2']} | {kv['failed']} | {kv['during_reload']} "
      f"| {kv['p99_during_reload_ms']} | {kv['p99_steady_ms']} "
      f"| {kv['reload_done_ms_median']} / {kv['reload_done_ms_max']} |")
PY
cat "$OUT"
log "report: $OUT"
