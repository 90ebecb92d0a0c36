#!/usr/bin/env python3
"""Every metric and label value that deploy/ queries is one the gateway exports.

The allowed names, label names and label values are read from the contract,
shared/contract/gateway.md section 3 (the metric table and the list of label values), so that they are
written down once. Checked:
  - the expressions of prometheus/recording-rules.yml and prometheus/alerting-rules.yml, and the queries
    inside the alerts' annotation templates;
  - the expressions and template-variable queries of grafana/*.json;
  - the input series and expected labels of the promtool tests in prometheus/tests/, so that the tests
    are written against the real metrics.
A name must be a metric of section 3 (a histogram only with _bucket, _sum or _count), one of the
process collector's metrics, the output of a recording rule defined here, or Prometheus's own `up`
(rules and tests only: the gateway cannot export whether it is scraped). A label matcher or expected
label on a closed label set must use values of that set. Exit status 1 on any violation.

Usage: check_metric_names.py [--contract PATH]   (default: <repo>/tests/data/shared/contract/gateway.md)
"""

import argparse
import glob
import json
import os
import re
import sys

import yaml

DEPLOY = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(DEPLOY)

# What the Rust prometheus crate's process collector exports (gateway.md lists it as `process_*`).
PROCESS_METRICS = {
    "process_cpu_seconds_total": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_threads": "gauge",
}
# Labels that the scrape adds to every series (prometheus.yml, servicemonitor.yaml).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "node", "service", "endpoint", "container"}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan", "atan2",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class Contract:
    def __init__(self, path):
        text = open(path, encoding="utf-8").read()
        m = re.search(r"^## 3\..*?$(.*?)(?=^## \d|\Z)", text, re.S | re.M)
        if not m:
            sys.exit(f"{path}: no section 3 (metrics)")
        section = m.group(1)
        self.metrics = {}  # name -> (type, set of labels)
        for line in section.splitlines():
            if not line.startswith("| `"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 3:
                continue
            names = re.findall(r"`([^`]+)`", cells[0])
            kind = cells[1].split()[0] if cells[1] else ""
            labels = set(re.findall(r"`([^`]+)`", cells[2]))
            for name in names:
                if name.endswith("*"):
                    continue  # process_*: the explicit list above
                self.metrics[name] = (kind, labels)
        for name, kind in PROCESS_METRICS.items():
            self.metrics[name] = (kind, set())
        self.values = {}  # label -> set of values, or None when open (status: the numeric code)
        for m in re.finditer(r"^- `(\w+)`:\s*(.*?)(?=^- `|^\S|\Z)", section, re.S | re.M):
            label, rest = m.group(1), m.group(2)
            vals = re.findall(r"`([^`]+)`", rest)
            self.values[label] = set(vals) if vals else None
        if len(self.metrics) < 10 or "outcome" not in self.values:
            sys.exit(f"{path}: could not parse the metric table and label values of section 3")

    def resolve(self, name):
        """(base metric name, type) for a series name, or None."""
        if name in self.metrics:
            kind = self.metrics[name][0]
            return (None if kind == "histogram" else name), kind
        for suffix in HISTOGRAM_SUFFIXES:
            base = name[: -len(suffix)]
            if name.endswith(suffix) and self.metrics.get(base, ("",))[0] == "histogram":
                return base, "histogram"
        return None, None


class Checker:
    def __init__(self, contract, recorded):
        self.c = contract
        self.recorded = recorded
        self.errors = []
        self.used = set()
        self.exprs = 0

    def error(self, where, msg):
        self.errors.append(f"{where}: {msg}")

    def check_name(self, where, name, allow_up):
        if ":" in name:
            if name not in self.recorded:
                self.error(where, f"{name!r} is not the output of a recording rule in prometheus/recording-rules.yml")
            return None
        if name == "up":
            if not allow_up:
                self.error(where, "'up' is Prometheus's own metric, not the gateway's: not in the dashboard")
            return None
        base, kind = self.c.resolve(name)
        if base is None:
            if kind == "histogram":
                self.error(where, f"{name!r} is a histogram: query {name}_bucket, _sum or _count")
            else:
                self.error(where, f"{name!r} is not a metric of gateway.md section 3 nor a process_* metric")
            return None
        self.used.add(base)
        return base

    def check_labels(self, where, metric, pairs, histogram_bucket=False):
        """pairs: (label, op, value). metric: base name of a gateway metric, or None (skip names)."""
        for label, op, value in pairs:
            if metric is not None:
                allowed = self.c.metrics[metric][1] | TARGET_LABELS
                if histogram_bucket:
                    allowed = allowed | {"le"}
                if label not in allowed:
                    self.error(where, f"{metric} has no label {label!r} (labels: {sorted(self.c.metrics[metric][1])})")
            self.check_value(where, label, op, value)

    def check_value(self, where, label, op, value):
        if label not in self.c.values or value.startswith("$"):
            return
        closed = self.c.values[label]
        if op in ("=~", "!~"):
            alts = value.split("|")
            for alt in alts:
                if closed is None:
                    if not re.fullmatch(r"[0-9.\[\]\-]+", alt):
                        self.error(where, f"{label}=~{value!r}: not a pattern of numeric codes")
                elif re.search(r"[.*+?()\[\]\\^$]", alt):
                    continue  # a real pattern: not checked value by value
                elif alt not in closed:
                    self.error(where, f"{label} value {alt!r} is not one of {sorted(closed)}")
        else:
            if closed is None:
                if not re.fullmatch(r"\d{3}", value):
                    self.error(where, f"{label}={value!r}: not a numeric status code")
            elif value not in closed and not (op == "!=" and value == ""):
                self.error(where, f"{label} value {value!r} is not one of {sorted(closed)}")

    def check_expr(self, where, expr, allow_up):
        self.exprs += 1
        # Grafana variables: $job, ${job}, $__rate_interval, ${__rate_interval}
        expr = re.sub(r"\$\{[^}]*\}|\$\w+", "1m", expr) if "$" in expr else expr
        # label_values(metric{...}, label) in template-variable queries
        expr = re.sub(r"label_values\s*\(([^,()]*(?:\{[^}]*\})?)\s*,\s*\w+\s*\)", r"(\1)", expr)
        # selectors with their matchers
        for m in re.finditer(r"(?<![\w:])([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}", expr):
            name, body = m.group(1), m.group(2)
            pairs = re.findall(r"""(\w+)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""", body)
            pairs = [(l, op, a or b) for l, op, a, b in pairs]
            metric = None
            if name and name not in PROMQL_KEYWORDS:
                metric = self.check_name(where, name, allow_up)
            elif not name:
                for l, op, v in pairs:
                    if l == "__name__" and op == "=":
                        metric = self.check_name(where, v, allow_up)
            bucket = bool(name and name.endswith("_bucket"))
            self.check_labels(where, metric, [p for p in pairs if p[0] != "__name__"], bucket)
        # bare names: drop strings, matchers, ranges, grouping label lists, then look at identifiers
        bare = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
        bare = re.sub(r"\{[^}]*\}", " ", bare)
        bare = re.sub(r"\[[^\]]*\]", " ", bare)
        bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
        for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", bare):
            name = m.group(1)
            if name.lower() in PROMQL_KEYWORDS:
                continue
            self.check_name(where, name, allow_up)


def template_queries(text):
    """PromQL strings inside Go-template actions of an annotation: {{ ... "expr" ... | query }}."""
    out = []
    for action in re.findall(r"\{\{(.*?)\}\}", text, re.S):
        if "query" not in action:
            continue
        for s in re.findall(r'"((?:[^"\\]|\\.)*)"', action):
            out.append(s.replace("%s", "companies-gateway"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contract", default=os.path.join(REPO, "tests", "data", "shared", "contract", "gateway.md"))
    args = ap.parse_args()
    contract = Contract(args.contract)

    rec_path = os.path.join(DEPLOY, "prometheus", "recording-rules.yml")
    alert_path = os.path.join(DEPLOY, "prometheus", "alerting-rules.yml")
    recorded = set()
    rule_docs = []
    for path in (rec_path, alert_path):
        doc = yaml.safe_load(open(path, encoding="utf-8"))
        rule_docs.append((path, doc))
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    recorded.add(rule["record"])
    ck = Checker(contract, recorded)

    def rel(p):
        return os.path.relpath(p, REPO)

    for path, doc in rule_docs:
        for group in doc["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule.get("alert")
                where = f"{rel(path)} {name}"
                ck.check_expr(where, rule["expr"], allow_up=True)
                for label, value in (rule.get("labels") or {}).items():
                    ck.check_value(where, label, "=", str(value))
                for key, text in (rule.get("annotations") or {}).items():
                    for q in template_queries(text):
                        ck.check_expr(f"{where} annotation {key}", q, allow_up=True)

    dashboards = sorted(glob.glob(os.path.join(DEPLOY, "grafana", "*.json")))
    if not dashboards:
        ck.error("grafana/", "no dashboard")
    for path in dashboards:
        dash = json.load(open(path, encoding="utf-8"))
        panels = []
        stack = list(dash.get("panels", []))
        while stack:
            p = stack.pop(0)
            panels.append(p)
            stack.extend(p.get("panels", []))
        n = 0
        for p in panels:
            for t in p.get("targets", []) or []:
                if "expr" in t:
                    n += 1
                    ck.check_expr(f"{rel(path)} panel {p.get('title')!r}", t["expr"], allow_up=False)
        for v in dash.get("templating", {}).get("list", []):
            if v.get("type") == "query":
                q = v.get("query")
                q = q.get("query") if isinstance(q, dict) else q
                ck.check_expr(f"{rel(path)} variable {v.get('name')}", q, allow_up=False)
        if n == 0:
            ck.error(rel(path), "no panel queries")

    for path in sorted(glob.glob(os.path.join(DEPLOY, "prometheus", "tests", "*.yml"))):
        doc = yaml.safe_load(open(path, encoding="utf-8"))
        for test in doc.get("tests", []):
            where = f"{rel(path)} {test.get('name', '')!r}"
            for s in test.get("input_series", []):
                ck.check_expr(f"{where} input series", s["series"], allow_up=True)
            for a in test.get("alert_rule_test", []) or []:
                for e in a.get("exp_alerts", []) or []:
                    for label, value in (e.get("exp_labels") or {}).items():
                        ck.check_value(f"{where} exp_labels", label, "=", str(value))
            for q in test.get("promql_expr_test", []) or []:
                ck.check_expr(f"{where} promql_expr_test", q["expr"], allow_up=True)

    exported = {n for n in contract.metrics if n not in PROCESS_METRICS}
    unused = sorted(exported - ck.used)
    print(f"  contract: {len(exported)} gateway metrics, {len(contract.values)} label value sets ({rel(args.contract)})")
    print(f"  checked {ck.exprs} expressions; {len(recorded)} recording rules; metrics used: {len(ck.used)}")
    if unused:
        print(f"  note: metrics of section 3 that no rule or panel shows: {', '.join(unused)}")
    if ck.errors:
        for e in dict.fromkeys(ck.errors):
            print(f"  ERROR {e}", file=sys.stderr)
        print(f"  FAILED: {len(set(ck.errors))} problem(s)", file=sys.stderr)
        return 1
    print("  OK: every metric name and label value is the gateway's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
