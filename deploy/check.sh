#!/usr/bin/env bash
# Checks deploy/: Prometheus config, rules and their unit tests, the Kubernetes manifests against the
# Kubernetes schemas, the dashboard's and rules' metric names against gateway.md section 3, the
# shutdown arithmetic, the systemd unit. Run from the repository root:  bash deploy/check.sh
# Installs what is missing (Debian 12 + PyPI): promtool (extracted from Debian's prometheus package,
# so that no Prometheus server gets installed and started on :9090, the gateway's admin port) and
# kubernetes-validate and dockerfile (pinned, in a venv). Environment:
#   DEPLOY_CHECK_CACHE  where the tools are kept between runs (default ~/.cache/companies-gateway-deploy)
#   GATEWAY_BIN         a built companies-gateway, to validate kubernetes/config.toml with --check-config
#                       (default: target/release or target/debug when present)
#   K8S_VERSION         the Kubernetes schema version to validate against (default 1.30.0: the oldest
#                       version the Deployment supports, for its preStop sleep action)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DEPLOY=$ROOT/deploy
CONTRACT=${GATEWAY_CONTRACT:-$ROOT/tests/data/shared/contract/gateway.md}
CACHE=${DEPLOY_CHECK_CACHE:-${HOME:-/root}/.cache/companies-gateway-deploy}
K8S_VERSION=${K8S_VERSION:-1.30.0}
KUBERNETES_VALIDATE_VERSION=1.37.0
DOCKERFILE_VERSION=3.4.0
START=$SECONDS
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

FAILED=()
PASSED=0
SKIPPED=0
section() { printf '\n== %s\n' "$*"; }
# step NAME COMMAND...: runs it, records the result, goes on with the next step.
step() {
  local name=$1; shift
  local t0=$SECONDS
  if "$@"; then
    PASSED=$((PASSED + 1)); printf -- '-- ok: %s (%ss)\n' "$name" $((SECONDS - t0))
  else
    FAILED+=("$name"); printf -- '-- FAILED: %s\n' "$name"
  fi
}
skip() { SKIPPED=$((SKIPPED + 1)); printf -- '-- skipped: %s\n' "$*"; }

APT_UPDATED=
apt_update() {
  [ -n "$APT_UPDATED" ] && return 0
  echo "   apt-get update"
  apt-get update -qq >/dev/null
  APT_UPDATED=1
}
apt_install() {
  apt_update
  echo "   apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---- tools ----------------------------------------------------------------------------------------
section "tools"
if [ ! -f "$CONTRACT" ]; then
  echo "gateway.md not found at $CONTRACT (set GATEWAY_CONTRACT)"; exit 1
fi
command -v python3 >/dev/null || apt_install python3 python3-venv
mkdir -p "$CACHE"

# Python packages, pinned, in a venv kept in the cache: PyYAML (comes with kubernetes-validate),
# kubernetes-validate (the Kubernetes schemas) and dockerfile (BuildKit's Dockerfile parser).
PY_PACKAGES=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "dockerfile==$DOCKERFILE_VERSION")
VENV=$CACHE/venv
PY=$VENV/bin/python
if [ "$(cat "$VENV/.packages" 2>/dev/null)" != "${PY_PACKAGES[*]}" ] \
  || ! "$PY" -c 'import tomllib, yaml, kubernetes_validate, dockerfile' 2>/dev/null; then
  echo "   creating $VENV with ${PY_PACKAGES[*]}"
  rm -rf "$VENV"
  python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$VENV"; }
  "$PY" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
  "$PY" -c 'import tomllib' 2>/dev/null || { echo "python >= 3.11 needed (tomllib)"; exit 1; }
  echo "${PY_PACKAGES[*]}" >"$VENV/.packages"
fi
echo "   python: $PY ($("$PY" --version 2>&1); ${PY_PACKAGES[*]})"

# promtool: on PATH, or extracted from Debian's prometheus package (promtool.sh, shared with .ci/test).
PROMTOOL=$(DEPLOY_CHECK_CACHE=$CACHE bash "$DEPLOY/promtool.sh")
echo "   promtool: $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -n1))"

KUSTOMIZE=()
if command -v kustomize >/dev/null; then KUSTOMIZE=(kustomize build)
elif command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then KUSTOMIZE=(kubectl kustomize)
fi

GATEWAY=${GATEWAY_BIN:-}
if [ -z "$GATEWAY" ]; then
  for b in "$ROOT/target/release/companies-gateway" "$ROOT/target/debug/companies-gateway"; do
    if [ -x "$b" ]; then GATEWAY=$b; break; fi
  done
fi

# ---- Prometheus -----------------------------------------------------------------------------------
section "Prometheus: config, rules, rule unit tests"

promtool_check_config() {
  local out
  if out=$("$PROMTOOL" check config "$DEPLOY/prometheus/prometheus.yml" 2>&1); then
    echo "$out"; return 0
  fi
  if ! grep -q 'field kubernetes_sd_configs not found' <<<"$out"; then
    echo "$out"; return 1
  fi
  # Debian builds Prometheus without Kubernetes service discovery. Check a copy whose kubernetes job
  # discovers through static_configs instead: everything else (relabelling included) is checked as is;
  # the kubernetes_sd_configs block gets a structural check.
  echo "   this promtool has no Kubernetes discovery (Debian build): checking the kubernetes job's"
  echo "   kubernetes_sd_configs structurally, the rest of prometheus.yml with promtool"
  "$PY" - "$DEPLOY/prometheus/prometheus.yml" "$TMP/prometheus.yml" <<'EOF' || return 1
import os, sys, yaml
src, dst = sys.argv[1], sys.argv[2]
cfg = yaml.safe_load(open(src))
base = os.path.dirname(os.path.abspath(src))
cfg["rule_files"] = [os.path.join(base, f) for f in cfg.get("rule_files", [])]
roles = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}
keys = {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata",
        "basic_auth", "authorization", "oauth2", "tls_config", "proxy_url", "follow_redirects", "enable_http2"}
ok = True
for job in cfg["scrape_configs"]:
    for sd in job.pop("kubernetes_sd_configs", []) or []:
        bad = set(sd) - keys
        names = (sd.get("namespaces") or {}).get("names", [])
        if bad or sd.get("role") not in roles or not all(isinstance(n, str) for n in names):
            print(f"   job {job['job_name']}: bad kubernetes_sd_configs entry {sd}")
            ok = False
        else:
            print(f"   job {job['job_name']}: kubernetes_sd_configs role={sd['role']} namespaces={names}: ok")
        job.setdefault("static_configs", []).append({"targets": ["10.0.0.1:9090"]})
yaml.safe_dump(cfg, open(dst, "w"), sort_keys=False)
sys.exit(0 if ok else 1)
EOF
  "$PROMTOOL" check config "$TMP/prometheus.yml"
}
step "promtool check config prometheus/prometheus.yml" promtool_check_config
step "promtool check rules (recording, alerting)" \
  "$PROMTOOL" check rules "$DEPLOY/prometheus/recording-rules.yml" "$DEPLOY/prometheus/alerting-rules.yml"
step "promtool test rules prometheus/tests/*.yml" \
  "$PROMTOOL" test rules "$DEPLOY"/prometheus/tests/*.yml

# Each alert's tests must notice a broken alert: one that never fires (the firing cases fail) and one
# that always fires (the quiet cases fail).
alert_mutations() {
  "$PY" - "$DEPLOY/prometheus" "$TMP/mut" "$PROMTOOL" <<'EOF'
import os, shutil, subprocess, sys, yaml
src, work, promtool = sys.argv[1], sys.argv[2], sys.argv[3]
rules = yaml.safe_load(open(os.path.join(src, "alerting-rules.yml")))
alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
bad = 0
for alert in alerts:
    for kind, expr in (("never fires", "vector(1) < 0"), ("always fires", "vector(1)")):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        doc = yaml.safe_load(open(os.path.join(work, "alerting-rules.yml")))
        for g in doc["groups"]:
            for r in g["rules"]:
                if r.get("alert") == alert:
                    r["expr"] = expr
        yaml.safe_dump(doc, open(os.path.join(work, "alerting-rules.yml"), "w"), sort_keys=False)
        p = subprocess.run([promtool, "test", "rules", os.path.join(work, "tests", "alerting-rules.test.yml")],
                           capture_output=True, text=True)
        out = p.stdout + p.stderr
        caught = p.returncode != 0 and f"alertname: {alert}," in out
        if kind == "always fires":
            caught = caught and "exp:[]" in out.replace(" ", "").replace("\n", "")
        print(f"   {alert} {kind}: {'caught' if caught else 'NOT CAUGHT by the tests'}")
        bad += not caught
shutil.rmtree(work, ignore_errors=True)
sys.exit(1 if bad else 0)
EOF
}
step "alert tests catch a broken alert (never fires / always fires)" alert_mutations

# ---- metric names ---------------------------------------------------------------------------------
section "Grafana dashboard and metric names"
dashboard_json() {
  local f rc=0
  for f in "$DEPLOY"/grafana/*.json; do
    if "$PY" -m json.tool "$f" >/dev/null; then echo "   $f: valid JSON"; else rc=1; fi
  done
  return $rc
}
step "dashboard JSON parses" dashboard_json
# The dashboard's PromQL, with Grafana's variables replaced, must parse: promtool check rules on a
# throwaway rule file made of it.
dashboard_promql() {
  "$PY" - "$DEPLOY/grafana" "$TMP/dashboard-rules.yml" <<'EOF' || return 1
import glob, json, re, sys, yaml
rules = []
for path in sorted(glob.glob(sys.argv[1] + "/*.json")):
    stack = list(json.load(open(path)).get("panels", []))
    while stack:
        p = stack.pop(0)
        stack.extend(p.get("panels", []))
        for t in p.get("targets", []) or []:
            if t.get("expr"):
                expr = re.sub(r"\$__rate_interval|\$\{__rate_interval\}|\$__interval", "1m", t["expr"])
                expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
                rules.append({"record": f"dashboard:panel{len(rules)}:expr", "expr": expr})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"   {len(rules)} panel queries")
EOF
  "$PROMTOOL" check rules --lint=none "$TMP/dashboard-rules.yml"
}
step "dashboard PromQL parses (promtool)" dashboard_promql
step "metric names and label values are gateway.md section 3's" \
  "$PY" "$DEPLOY/check_metric_names.py" --contract "$CONTRACT"

# ---- Kubernetes -----------------------------------------------------------------------------------
section "Kubernetes manifests (schemas $K8S_VERSION)"
CORE=()
for f in "$DEPLOY"/kubernetes/*.yaml; do
  case $(basename "$f") in kustomization.yaml|servicemonitor.yaml) ;; *) CORE+=("$f") ;; esac
done
step "kubernetes-validate --strict on ${#CORE[@]} core manifests" \
  "$PY" -m kubernetes_validate --strict -k "$K8S_VERSION" "${CORE[@]}"
if [ ${#KUSTOMIZE[@]} -gt 0 ]; then
  kustomize_build() {
    "${KUSTOMIZE[@]}" "$DEPLOY/kubernetes" >"$TMP/rendered.yaml" || return 1
    echo "   rendered with ${KUSTOMIZE[*]}: $(grep -c '^kind:' "$TMP/rendered.yaml") objects"
    "$PY" -m kubernetes_validate --strict -k "$K8S_VERSION" "$TMP/rendered.yaml" 2>&1 \
      | sed 's#'"$TMP"'/rendered.yaml#kustomize output#' \
      | { grep -v "Couldn't find schema for kind ServiceMonitor" || true; }
    return "${PIPESTATUS[0]}"
  }
  step "kustomize build deploy/kubernetes, and the output validated" kustomize_build
else
  skip "kustomize build (neither kustomize nor kubectl here); the manifests were validated one by one"
fi
step "deploy/ consistency: kustomization, ServiceMonitor, shutdown arithmetic, unit, Dockerfile" \
  "$PY" "$DEPLOY/check_deploy.py" --contract "$CONTRACT"
if [ -n "$GATEWAY" ]; then
  gateway_check_config() {
    env -i PATH=/usr/bin:/bin "$GATEWAY" --check-config --config "$DEPLOY/kubernetes/config.toml" >/dev/null \
      && echo "   $GATEWAY accepts kubernetes/config.toml"
  }
  step "companies-gateway --check-config kubernetes/config.toml" gateway_check_config
else
  skip "companies-gateway --check-config on kubernetes/config.toml (no binary; set GATEWAY_BIN or build it)"
fi

# ---- systemd --------------------------------------------------------------------------------------
section "systemd unit"
if command -v systemd-analyze >/dev/null; then
  # verify needs the ExecStart binary to exist: check a copy of the unit pointing at the built gateway,
  # or at /bin/true when there is none (the directives are what is checked).
  UNIT_DIR=$TMP/systemd
  mkdir -p "$UNIT_DIR"
  BIN=/usr/local/bin/companies-gateway
  [ -x "$BIN" ] || BIN=${GATEWAY:-/bin/true}
  sed "s#/usr/local/bin/companies-gateway#$BIN#g" "$DEPLOY/systemd/companies-gateway.service" \
    >"$UNIT_DIR/companies-gateway.service"
  unit_verify() {
    echo "   ExecStart binary for the check: $BIN"
    local out
    out=$(systemd-analyze verify "$UNIT_DIR/companies-gateway.service" 2>&1) || { echo "$out"; return 1; }
    # verify exits 0 on some warnings: treat any line about the unit as a failure.
    if grep -i 'companies-gateway.service' <<<"$out"; then return 1; fi
    return 0
  }
  step "systemd-analyze verify systemd/companies-gateway.service" unit_verify
  if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    unit_security() {
      systemd-analyze security --offline=yes --threshold=20 "$UNIT_DIR/companies-gateway.service" >"$TMP/security.txt" 2>&1
      local rc=$?
      grep -i 'overall exposure' "$TMP/security.txt" | sed 's/^/   /'
      return $rc
    }
    step "systemd-analyze security: exposure at most 2.0" unit_security
  else
    skip "systemd-analyze security --offline (systemd too old)"
  fi
else
  skip "systemd-analyze verify (systemd-analyze not available)"
fi

# ---- shell ----------------------------------------------------------------------------------------
section "shell scripts"
if command -v shellcheck >/dev/null; then
  shell_lint() { shellcheck "$DEPLOY/check.sh" "$DEPLOY/promtool.sh" && echo "   check.sh, promtool.sh: clean"; }
  step "shellcheck" shell_lint
else
  skip "shellcheck (not installed)"
fi

# ---- Docker ---------------------------------------------------------------------------------------
section "Dockerfile"
dockerfile_parse() {
  "$PY" - "$DEPLOY/Dockerfile" <<'EOF'
import sys, dockerfile
cmds = dockerfile.parse_file(sys.argv[1])
print(f"   {len(cmds)} instructions, {sum(c.cmd == 'FROM' for c in cmds)} stages, parsed by BuildKit's parser")
EOF
}
step "Dockerfile parses (BuildKit's parser)" dockerfile_parse
if docker info >/dev/null 2>&1; then
  step "docker build -f deploy/Dockerfile ." docker build -q -f "$DEPLOY/Dockerfile" -t companies-gateway:check "$ROOT"
else
  skip "docker build (no Docker engine); deploy/check_deploy.py checked the Dockerfile statically"
fi

printf '\n== deploy/check.sh done in %ss\n' $((SECONDS - START))
printf 'deploy: %d passed, %d failed, %d skipped\n' "$PASSED" "${#FAILED[@]}" "$SKIPPED"
if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'failed: %s\n' "${FAILED[@]}"
  exit 1
fi
