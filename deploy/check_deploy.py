#!/usr/bin/env python3
"""Consistency checks of deploy/ that no schema validator makes.

  kustomization  every manifest file of kubernetes/ is listed, every listed file exists
  servicemonitor the CRD kubernetes-validate has no schema for: fields, and that it selects the admin
                 Service's port, which targets the pods' admin port
  config         kubernetes/config.toml parses, uses only keys of gateway.md section 1, binds the
                 listener and the admin port on 0.0.0.0 at the ports the manifests use
  shutdown       preStop sleep == drain_delay, and terminationGracePeriodSeconds > preStop sleep +
                 drain_delay + drain_timeout
  deployment     replicas, probes, security context, resources, labels and names that tie the objects
  networkpolicy  evaluated as Kubernetes does for sample peers: the public port open to every peer,
                 the admin port only to the monitoring namespace; the label selector documented in
                 README.md; and broken variants of the policy (admin open, public closed, selecting
                 no pod, ...) must each fail these checks
  systemd        the hardening directives, LimitNOFILE holds max_connections beside the admin cap, the
                 reserve and the upstream side, TimeoutStopSec > drain_delay +
                 drain_timeout of the shipped config.toml
  dockerfile     multi-stage, non-root, the binary and the config in place, the ports exposed
  alert tests    every alert has a test where it fires and one where it stays quiet
Exit status 1 on any failure.
"""

import argparse
import copy
import ipaddress
import os
import re
import sys
import tomllib

import yaml

DEPLOY = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(DEPLOY)
K8S = os.path.join(DEPLOY, "kubernetes")

failures = []


def check(ok, what):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)
    return ok


def seconds(d):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", str(d))
    if not m:
        raise ValueError(f"not a duration: {d!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def contract_keys(contract):
    """{section: {key: default}} from gateway.md section 1."""
    text = open(contract, encoding="utf-8").read()
    sec = re.search(r"^## 1\..*?$(.*?)(?=^## \d)", text, re.S | re.M).group(1)
    keys = {}
    for line in sec.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"[a-z_]+", cells[0]) or cells[0] == "section":
            continue
        for key in cells[1].split(","):
            keys.setdefault(cells[0], {})[key.strip()] = cells[3].strip("`")
    return keys


# ---- NetworkPolicy evaluation -----------------------------------------------------------------------
def selector_matches(sel, labels):
    """A LabelSelector against a label set: matchLabels and matchExpressions; {} selects all."""
    if sel is None:
        return False
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        key, op, vals = e["key"], e["operator"], e.get("values") or []
        ok = {"In": labels.get(key) in vals, "NotIn": labels.get(key) not in vals,
              "Exists": key in labels, "DoesNotExist": key not in labels}.get(op)
        if not ok:
            return False
    return True


def peer_matches(peer, src, policy_ns):
    """One `from` entry against a source {ns, ns_labels, labels, ip}."""
    if "ipBlock" in peer:
        ip = ipaddress.ip_address(src["ip"])
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"], strict=False) and not any(
            ip in ipaddress.ip_network(x, strict=False) for x in block.get("except") or [])
    if src.get("ns") is None:  # outside the cluster: only an ipBlock can admit it
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], src["ns_labels"]):
            return False
    elif src["ns"] != policy_ns:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], src["labels"])


def port_matches(entry, port_name, port_number):
    if entry.get("protocol", "TCP") != "TCP":
        return False
    p = entry.get("port")
    if p is None:
        return True
    if isinstance(p, str):
        return p == port_name
    return p <= port_number <= entry.get("endPort", p)


def admitted(policies, pod_labels, policy_ns, src, port_name, port_number):
    """Whether ingress from `src` to the pod's port is allowed, as Kubernetes evaluates policies."""
    isolating = [pol for pol in policies
                 if selector_matches(pol["spec"].get("podSelector"), pod_labels)
                 and "Ingress" in (pol["spec"].get("policyTypes") or ["Ingress"])]
    if not isolating:
        return True
    for pol in isolating:
        for rule in pol["spec"].get("ingress") or []:
            ports = rule.get("ports") or []
            if ports and not any(port_matches(e, port_name, port_number) for e in ports):
                continue
            peers = rule.get("from") or []
            if not peers or any(peer_matches(peer, src, policy_ns) for peer in peers):
                return True
    return False


# Sample peers: where Prometheus runs, every other kind of client.
MONITORING_NS = {"kubernetes.io/metadata.name": "monitoring"}
PEERS = {
    "prometheus in namespace monitoring": {"ns": "monitoring", "ns_labels": MONITORING_NS,
                                           "labels": {"app.kubernetes.io/name": "prometheus"}, "ip": "10.1.0.5"},
    "a pod in namespace default": {"ns": "default", "ns_labels": {"kubernetes.io/metadata.name": "default"},
                                   "labels": {"app": "client"}, "ip": "10.1.1.7"},
    "another pod in the gateway's namespace": {"ns": "companies-gateway",
                                               "ns_labels": {"kubernetes.io/metadata.name": "companies-gateway"},
                                               "labels": {"app": "debug"}, "ip": "10.1.2.9"},
    "a client outside the cluster": {"ns": None, "ns_labels": {}, "labels": {}, "ip": "203.0.113.7"},
}


def network_policy_problems(policies, pod_labels, policy_ns, cports):
    """What is wrong with `policies` for the gateway's pods: a list of sentences (empty: fine)."""
    problems = []
    if not policies:
        return ["no NetworkPolicy"]
    for peer, src in PEERS.items():
        if not admitted(policies, pod_labels, policy_ns, src, "http", cports["http"]):
            problems.append(f"public port http refused to {peer}")
        want_admin = src["ns_labels"] == MONITORING_NS
        if admitted(policies, pod_labels, policy_ns, src, "admin", cports["admin"]) != want_admin:
            problems.append(f"admin port {'refused to' if want_admin else 'open to'} {peer}")
    return problems


def network_policy_mutations(policy):
    """Broken variants of the shipped policy, each of which the checks must refuse."""
    def variant(name, change):
        p = copy.deepcopy(policy)
        change(p["spec"])
        return name, p

    def admin_rules(spec):
        return [r for r in spec["ingress"] if any(e.get("port") in ("admin", 9090) for e in r.get("ports") or [])]

    def del_from(spec):
        for r in admin_rules(spec):
            r.pop("from", None)

    def any_namespace(spec):
        for r in admin_rules(spec):
            for peer in r.get("from", []):
                peer["namespaceSelector"] = {}

    def same_namespace(spec):
        for r in admin_rules(spec):
            r["from"] = [{"podSelector": {}}]

    def drop_public(spec):
        spec["ingress"] = admin_rules(spec)

    return [
        variant("admin rule without `from` (open to all)", del_from),
        variant("admin rule from every namespace", any_namespace),
        variant("admin rule from the gateway's own namespace", same_namespace),
        variant("an allow-all rule added", lambda s: s["ingress"].append({})),
        variant("policyTypes Egress only (ingress not isolated)", lambda s: s.update(policyTypes=["Egress"])),
        variant("podSelector that selects no gateway pod", lambda s: s.update(podSelector={"matchLabels": {"app": "other"}})),
        variant("public port rule removed", drop_public),
        variant("admin port by a wrong number",
                lambda s: [e.update(port=9091) for r in admin_rules(s) for e in r["ports"]]),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contract", default=os.path.join(REPO, "tests", "data", "shared", "contract", "gateway.md"))
    args = ap.parse_args()

    # ---- kustomization -----------------------------------------------------------------------------
    print("kustomization.yaml lists every manifest")
    kust = yaml.safe_load(open(os.path.join(K8S, "kustomization.yaml"), encoding="utf-8"))
    resources = kust.get("resources", [])
    files = sorted(f for f in os.listdir(K8S) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")
    check(sorted(resources) == files, f"resources {sorted(resources)} == manifest files {files}")
    for r in resources:
        check(os.path.isfile(os.path.join(K8S, r)), f"resource {r} exists")
    gens = {g["name"]: g for g in kust.get("configMapGenerator", [])}
    gen_files = [f for g in gens.values() for f in g.get("files", [])]
    check("companies-gateway-config" in gens and gen_files == ["config.toml"],
          "configMapGenerator companies-gateway-config from config.toml (key config.toml)")
    for f in gen_files:
        check(os.path.isfile(os.path.join(K8S, f.split("=")[-1])), f"generator file {f} exists")
    others = [f for f in os.listdir(K8S) if f not in files + ["kustomization.yaml"] + gen_files]
    check(not others, f"no stray files in kubernetes/ {others if others else ''}".rstrip())

    docs = {}
    for r in resources:
        for d in load_all(os.path.join(K8S, r)):
            docs[(d["kind"], d["metadata"]["name"])] = d
    dep = docs[("Deployment", "companies-gateway")]
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    gw = next(c for c in pod["containers"] if c["name"] == "gateway")
    cports = {p["name"]: p["containerPort"] for p in gw["ports"]}

    def selects(selector):
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    # ---- config.toml -------------------------------------------------------------------------------
    print("kubernetes/config.toml (the ConfigMap)")
    with open(os.path.join(K8S, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    known = contract_keys(args.contract)
    unknown = [f"[{s}] {k}" for s, t in cfg.items() for k in (t if isinstance(t, dict) else {"": 0})
               if s not in known or k not in known[s]]
    check(not unknown, f"only keys of gateway.md section 1 {unknown if unknown else ''}".rstrip())
    check(cfg["admin"]["addr"] == f"0.0.0.0:{cports['admin']}", f"[admin] addr = 0.0.0.0:{cports['admin']} (container port admin)")
    check(cfg["listener"]["addr"] == f"0.0.0.0:{cports['http']}", f"[listener] addr = 0.0.0.0:{cports['http']} (container port http)")
    check("ca_file" not in cfg.get("upstream", {}), "[upstream] ca_file unset: the real upstream uses public roots")
    drain_delay = seconds(cfg["shutdown"]["drain_delay"])
    drain_timeout = seconds(cfg["shutdown"]["drain_timeout"])

    # ---- shutdown arithmetic -----------------------------------------------------------------------
    print("shutdown timing")
    pre_stop = gw.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    grace = pod.get("terminationGracePeriodSeconds")
    check(pre_stop is not None and pre_stop == drain_delay,
          f"preStop sleep {pre_stop}s matches drain_delay {drain_delay:g}s")
    check(grace is not None and pre_stop is not None and grace > pre_stop + drain_delay + drain_timeout,
          f"terminationGracePeriodSeconds {grace} > preStop {pre_stop} + drain_delay {drain_delay:g} + drain_timeout {drain_timeout:g} = {(pre_stop or 0) + drain_delay + drain_timeout:g}")

    # ---- deployment --------------------------------------------------------------------------------
    print("deployment.yaml")
    replicas = dep["spec"].get("replicas")
    check(replicas is None or replicas >= 2,
          f"replicas {replicas} >= 2" if replicas is not None else "replicas left to the HPA (minReplicas below)")
    check(selects(dep["spec"]["selector"]["matchLabels"]), "selector matches the pod labels")
    for name, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = gw.get(name, {}).get("httpGet", {})
        check(probe.get("path") == path and probe.get("port") == "admin", f"{name} GET {path} on port admin")
    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(cports["admin"])
          and ann.get("prometheus.io/path") == "/metrics", "prometheus.io/scrape, port (admin), path annotations")
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
          "pod: runAsNonRoot, seccomp RuntimeDefault")
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
              and sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("capabilities", {}).get("add")
              and sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True and not sc.get("privileged"),
              f"container {c['name']}: read-only root, non-root, no privilege escalation, drop ALL")
        res = c.get("resources", {})
        check(bool(res.get("requests", {}).get("cpu")) and bool(res.get("requests", {}).get("memory"))
              and bool(res.get("limits", {}).get("memory")),
              f"container {c['name']}: cpu and memory requests, memory limit")
    check(pod.get("enableServiceLinks") is False, "enableServiceLinks: false (no stray GATEWAY_* variables)")
    check(all(not e["name"].startswith("GATEWAY_") or e["name"].split("_", 2)[1].lower() in known
              for e in gw.get("env", [])), "GATEWAY_* variables name known sections")
    check(not any(e["name"] in ("RUST_LOG", "GATEWAY_LOG_LEVEL") for e in gw.get("env", [])),
          "no RUST_LOG or GATEWAY_LOG_LEVEL in env: the ConfigMap's [log] level is in force")
    vols = {v["name"]: v for v in pod["volumes"]}
    check(vols["config"]["configMap"]["name"] in gens, "config volume uses the generated ConfigMap")
    check(vols["upstream-ca"]["secret"].get("optional") is True, "upstream CA Secret volume is optional")
    mounts = {m["mountPath"]: m for m in gw["volumeMounts"]}
    check("/etc/companies-gateway/config.toml" in mounts, "config mounted at /etc/companies-gateway/config.toml")
    check(gw.get("args", [])[-2:] == ["--config", "/etc/companies-gateway/config.toml"], "gateway args --config <mounted file>")
    ca_mount = next((m for m in gw["volumeMounts"] if m["name"] == "upstream-ca"), {})
    check(ca_mount and "subPath" not in ca_mount, "upstream CA mounted as a directory (updates reach it)")
    spread = pod.get("topologySpreadConstraints", []) or pod.get("affinity", {}).get("podAntiAffinity")
    check(bool(spread), "replicas spread across nodes")

    # ---- services, hpa, pdb, servicemonitor --------------------------------------------------------
    print("service.yaml, hpa.yaml, pdb.yaml, servicemonitor.yaml")
    services = [d for (k, _), d in docs.items() if k == "Service"]
    for s in services:
        check(selects(s["spec"]["selector"]), f"Service {s['metadata']['name']} selects the pods")
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort")
            check(tp in cports or tp in cports.values(), f"Service {s['metadata']['name']} port {p['name']} targets a container port ({tp})")
    hpa = docs[("HorizontalPodAutoscaler", "companies-gateway")]
    check(hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
          and hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"],
          "HPA autoscaling/v2 targets the Deployment, minReplicas >= 2")
    check(any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"]["metrics"]), "HPA scales on CPU")
    pdb = docs[("PodDisruptionBudget", "companies-gateway")]
    check(pdb["apiVersion"] == "policy/v1" and selects(pdb["spec"]["selector"]["matchLabels"]), "PDB policy/v1 selects the pods")
    sm = docs.get(("ServiceMonitor", "companies-gateway"))
    if check(sm is not None, "ServiceMonitor present"):
        check(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion monitoring.coreos.com/v1")
        allowed_spec = {"jobLabel", "selector", "endpoints", "namespaceSelector", "targetLabels", "podTargetLabels",
                        "sampleLimit", "targetLimit", "labelLimit", "attachMetadata"}
        check(set(sm["spec"]) <= allowed_spec, f"ServiceMonitor spec fields known ({sorted(sm['spec'])})")
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        check(len(matched) == 1, f"ServiceMonitor selects exactly one Service ({[s['metadata']['name'] for s in matched]})")
        allowed_ep = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings",
                      "metricRelabelings", "params", "tlsConfig", "bearerTokenSecret", "authorization", "followRedirects"}
        for ep in sm["spec"]["endpoints"]:
            check(set(ep) <= allowed_ep, f"ServiceMonitor endpoint fields known ({sorted(ep)})")
            port = next((p for s in matched for p in s["spec"]["ports"] if p.get("name") == ep.get("port")), None)
            check(port is not None and port.get("targetPort") in ("admin", cports["admin"]),
                  f"endpoint port {ep.get('port')!r} is the Service port that targets the admin port")
            check(ep.get("path", "/metrics") == "/metrics", "endpoint path /metrics")
            if "interval" in ep and "scrapeTimeout" in ep:
                check(seconds(ep["scrapeTimeout"]) <= seconds(ep["interval"]), "scrapeTimeout <= interval")
        jl = sm["spec"].get("jobLabel")
        check(all(s["metadata"].get("labels", {}).get(jl) == "companies-gateway" for s in matched),
              f"jobLabel {jl} gives job=\"companies-gateway\" (the alerts' job)")

    # ---- network policy ----------------------------------------------------------------------------
    print("networkpolicy.yaml")
    policies = [d for (k, _), d in docs.items() if k == "NetworkPolicy"]
    ns = kust.get("namespace", "default")
    problems = network_policy_problems(policies, pod_labels, ns, cports)
    check(not problems, "public port open to every peer, admin port only to the monitoring namespace"
          + (f" ({'; '.join(problems)})" if problems else ""))
    for peer in PEERS:
        print(f"       {peer}: http {'open' if admitted(policies, pod_labels, ns, PEERS[peer], 'http', cports['http']) else 'closed'},"
              f" admin {'open' if admitted(policies, pod_labels, ns, PEERS[peer], 'admin', cports['admin']) else 'closed'}")
    readme = open(os.path.join(DEPLOY, "README.md"), encoding="utf-8").read()
    selectors = [peer["namespaceSelector"]["matchLabels"] for pol in policies for r in pol["spec"].get("ingress") or []
                 for peer in r.get("from") or [] if (peer.get("namespaceSelector") or {}).get("matchLabels")]
    check(bool(selectors) and all(f"{k}: {v}" in readme for sel in selectors for k, v in sel.items()),
          f"README.md documents the admin port's namespace selector ({selectors})")
    if len(policies) == 1:
        for name, broken in network_policy_mutations(policies[0]):
            caught = network_policy_problems([broken], pod_labels, ns, cports)
            check(bool(caught), f"a broken policy fails the check: {name}"
                  + (f" ({caught[0]})" if caught else ""))
    else:
        check(False, f"exactly one NetworkPolicy ({len(policies)})")

    # ---- systemd -----------------------------------------------------------------------------------
    print("systemd/companies-gateway.service")
    unit = {}
    for line in open(os.path.join(DEPLOY, "systemd", "companies-gateway.service"), encoding="utf-8"):
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            unit.setdefault(k.strip(), []).append(v.strip())
    with open(os.path.join(REPO, "config.toml"), "rb") as f:
        shipped = tomllib.load(f)
    dflt = known
    max_conn = int(shipped.get("limits", {}).get("max_connections", dflt["limits"]["max_connections"]))
    s_delay = seconds(shipped.get("shutdown", {}).get("drain_delay", dflt["shutdown"]["drain_delay"]))
    s_timeout = seconds(shipped.get("shutdown", {}).get("drain_timeout", dflt["shutdown"]["drain_timeout"]))
    want = {
        "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "NoNewPrivileges": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
        "ProtectClock": "yes", "ProtectHostname": "yes", "RestrictNamespaces": "yes", "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native", "CapabilityBoundingSet": "", "KillSignal": "SIGTERM",
        "Restart": "on-failure", "ConfigurationDirectory": "companies-gateway",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    for k, v in want.items():
        check(unit.get(k, [None])[-1] == v, f"{k}={v}")
    check("@system-service" in unit.get("SystemCallFilter", []) and any(
        f.startswith("~") and "@privileged" in f and "@resources" in f for f in unit.get("SystemCallFilter", [])),
        "SystemCallFilter=@system-service and ~@privileged @resources")
    check(any("-HUP" in v and "$MAINPID" in v for v in unit.get("ExecReload", [])), "ExecReload sends SIGHUP to $MAINPID")
    check(unit.get("ExecStart", [""])[-1] == "/usr/local/bin/companies-gateway --config /etc/companies-gateway/config.toml",
          "ExecStart runs /usr/local/bin/companies-gateway --config /etc/companies-gateway/config.toml")
    check(any("--check-config" in v for v in unit.get("ExecStartPre", [])), "ExecStartPre --check-config")
    nofile = int(unit.get("LimitNOFILE", ["0"])[-1].split(":")[-1])

    def shipped_int(section, key):
        return int(shipped.get(section, {}).get(key, dflt[section][key]))
    # The gateway's own budget (src/admin.rs public_connection_budget): below it, it lowers
    # max_connections at start-up.
    admin_max = shipped_int("admin", "max_connections")
    upstream = shipped_int("limits", "max_concurrent_requests") + shipped_int("upstream", "pool_max_idle_per_host")
    need = max_conn + admin_max + 64 + upstream
    check(nofile >= need, f"LimitNOFILE {nofile} >= max_connections {max_conn} + admin.max_connections {admin_max}"
          f" + 64 reserved + upstream {upstream} = {need} (else the gateway lowers max_connections)")
    stop = seconds(unit.get("TimeoutStopSec", ["0s"])[-1])
    check(stop > s_delay + s_timeout, f"TimeoutStopSec {stop:g}s > drain_delay {s_delay:g}s + drain_timeout {s_timeout:g}s (../config.toml)")

    # ---- Dockerfile --------------------------------------------------------------------------------
    print("Dockerfile (static checks; no Docker engine here)")
    df = open(os.path.join(DEPLOY, "Dockerfile"), encoding="utf-8").read()
    df = re.sub(r"\\\n", " ", df)
    instr = [l.strip() for l in df.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in instr if l.upper().startswith("FROM ")]
    check(len(froms) >= 2, f"multi-stage ({len(froms)} stages)")
    args = dict(re.match(r"ARG (\w+)=(\S+)", l).groups() for l in instr if re.match(r"ARG \w+=\S+", l))
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), l.split()[1]) for l in froms]
    check(bool(bases) and re.search(r"distroless|slim", bases[-1]) is not None, f"small runtime image ({bases[-1] if bases else '-'})")
    last = instr[instr.index(froms[-1]):] if froms else []
    users = [l.split()[1] for l in last if l.upper().startswith("USER ")]
    check(bool(users) and users[-1].split(":")[0] not in ("0", "root"), f"runtime USER non-root ({users})")
    check(any(l.upper().startswith("EXPOSE") and "8080" in l and "9090" in l for l in last), "EXPOSE 8080 9090")
    check(any("cargo build" in l and "--release" in l and "--locked" in l for l in instr), "cargo build --release --locked")
    check(any(l.upper().startswith("COPY") and l.endswith("/usr/local/bin/companies-gateway") for l in last), "binary at /usr/local/bin/companies-gateway")
    check(any(l.upper().startswith("COPY") and l.endswith("/etc/companies-gateway/config.toml") for l in last), "config.toml at /etc/companies-gateway/config.toml")
    check('ENTRYPOINT ["/usr/local/bin/companies-gateway"]' in instr, "ENTRYPOINT the binary (exec form)")
    check(all(re.search(r"@sha256:[0-9a-f]{64}$", b) for b in bases), f"base images pinned by digest ({bases})")
    deps = [l for l in instr if "cargo build" in l and "COPY . ." not in l]
    copy_all = next((i for i, l in enumerate(instr) if l.upper().startswith("COPY . .")), len(instr))
    check(any(instr.index(l) < copy_all for l in deps), "dependencies built in a layer before the sources are copied")
    labels = " ".join(l for l in last if l.upper().startswith("LABEL"))
    check(all(f"org.opencontainers.image.{k}=" in labels for k in ("version", "revision", "title", "licenses"))
          and "${VERSION}" in labels and "${REVISION}" in labels,
          "OCI labels org.opencontainers.image.* with version and revision from build args")

    # ---- alert tests cover every alert ------------------------------------------------------------
    print("alert unit tests cover every alert")
    alerts = [r["alert"] for g in yaml.safe_load(open(os.path.join(DEPLOY, "prometheus", "alerting-rules.yml")))["groups"]
              for r in g["rules"] if "alert" in r]
    fires, quiet = set(), set()
    tdir = os.path.join(DEPLOY, "prometheus", "tests")
    for t in sorted(os.listdir(tdir)):
        for test in yaml.safe_load(open(os.path.join(tdir, t))).get("tests", []):
            for a in test.get("alert_rule_test", []) or []:
                (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
    for a in alerts:
        check(a in fires and a in quiet, f"{a}: a case where it fires and one where it stays quiet")
    for a in sorted((fires | quiet) - set(alerts)):
        check(False, f"test names an alert that does not exist: {a}")

    if failures:
        print(f"FAILED: {len(failures)} check(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
