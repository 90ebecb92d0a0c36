#!/usr/bin/env bash
# Prints the path of a promtool: the one on PATH, else one extracted from Debian's prometheus package
# into a cache. Only the binary: nothing is installed system-wide and no Prometheus server is started
# (a systemd host would start one on :9090, the gateway's admin port). deploy/check.sh and .ci/test
# both use it. Progress goes to stderr; stdout is the path alone.
#   DEPLOY_CHECK_CACHE  where the binary is kept (default ~/.cache/companies-gateway-deploy)
set -euo pipefail

if command -v promtool >/dev/null; then
  command -v promtool
  exit 0
fi
CACHE=${DEPLOY_CHECK_CACHE:-${HOME:-/root}/.cache/companies-gateway-deploy}
PROMTOOL=$CACHE/prometheus/usr/bin/promtool
if [ ! -x "$PROMTOOL" ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  echo "   apt-get update" >&2
  $sudo apt-get update -qq >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "   apt-get download prometheus (promtool only; nothing installed, no server started)" >&2
  mkdir -p "$CACHE"
  # (apt warns that it downloads unsandboxed into a root-only directory: harmless, filtered out)
  (cd "$tmp" && apt-get download -qq prometheus 2> >(grep -v 'unsandboxed as root' >&2) \
    && dpkg-deb -x prometheus_*.deb "$CACHE/prometheus") >&2
fi
echo "$PROMTOOL"
