#!/usr/bin/env python3
"""Helpers for run.sh: everything that is easier in Python than in bash. Standard library only.

Subcommands (run.sh is the only caller):
  ports N                         N free TCP ports on 127.0.0.1
  jwt                             an HS256 JWT (random secret) whose exp is one hour ahead
  nginx-string FILE               FILE's text as an nginx single-quoted string
  render TEMPLATE OUT K=V...      copy TEMPLATE to OUT, replacing every @K@ by V (all must be given)
  metric URL NAME [LABELS]        sum of a Prometheus metric at URL over the label sets that
                                  contain LABELS (e.g. 'result="miss"'); 0 if absent
  rss PID...                      "VmRSS VmHWM" in kB, summed over the PIDs
  new-conns LOG PORT T0 T1        connections the upstream saw opened on PORT between T0 and T1
  record ...                      parse one measurement and append it to the results TSV
  hold ...                        open N keep-alive connections, one valid request each, hold them
  report TSV META                 the Markdown report of a whole run
  perf-groups FILE                perf report's flat symbol list (stdin format of run.sh's
                                  PROFILE mode), summed by where the time went
"""

import argparse
import base64
import csv
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import statistics
import sys
import time
import urllib.request


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cmd_ports(args):
    socks = []
    try:
        for _ in range(args.n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    finally:
        for s in socks:
            s.close()


def cmd_jwt(_args):
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"sub": "load-bench", "iat": now, "exp": now + 3600}
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    sig = hmac.new(secrets.token_bytes(32), signing_input.encode(), hashlib.sha256).digest()
    print(signing_input + "." + b64url(sig))


def cmd_nginx_string(args):
    text = open(args.file, encoding="utf-8").read()
    if "$" in text:
        # nginx would read $name as a variable, and its strings have no escape for '$'.
        sys.exit(f"{args.file}: contains '$', which an nginx string cannot hold literally")
    print("'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'")


def cmd_render(args):
    text = open(args.template, encoding="utf-8").read()
    for pair in args.pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"render: expected KEY=VALUE, got {pair!r}")
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z0-9_]+@", text)
    if left:
        sys.exit(f"render {args.template}: no value for {sorted(set(left))}")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)


def cmd_metric(args):
    with urllib.request.urlopen(args.url, timeout=5) as r:
        body = r.read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == args.name and args.labels in (m.group(2) or ""):
            total += float(m.group(3))
    print(int(total) if total.is_integer() else total)


def read_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cmd_rss(args):
    rss = hwm = 0
    for pid in args.pids:
        st = read_status(pid)
        rss += st.get("VmRSS", 0)
        hwm += st.get("VmHWM", 0)
    print(rss, hwm)


def new_conns(log, port, t0, t1):
    """Counts lines of the upstream's access log (format: msec port connection requests) in the
    window whose connection_requests is 1: the first request of a connection just opened."""
    n = 0
    try:
        with open(log) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 4 or parts[1] != str(port):
                    continue
                if t0 <= float(parts[0]) <= t1 and parts[3] == "1":
                    n += 1
    except FileNotFoundError:
        pass
    return n


def cmd_new_conns(args):
    print(new_conns(args.log, args.port, args.t0, args.t1))


def parse_wrk(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    out = {"requests": None, "rps": None, "non2xx": 0, "socket_errors": 0}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(x) for x in m.groups())
    return out


def parse_oha(path):
    data = json.load(open(path))
    summary = data.get("summary", {})
    pct = data.get("latencyPercentiles", {})

    def ms(key):
        v = pct.get(key)
        return None if v is None else v * 1000.0

    statuses = data.get("statusCodeDistribution", {}) or {}
    errors = data.get("errorDistribution", {}) or {}
    ok = sum(v for k, v in statuses.items() if str(k).startswith("2"))
    total = sum(statuses.values())
    return {
        "requests": total,
        "rps": summary.get("requestsPerSec"),
        "non2xx": total - ok,
        "socket_errors": sum(errors.values()),
        "errors_detail": errors,
        "p50": ms("p50"),
        "p99": ms("p99"),
        "p999": ms("p99.9"),
    }


def busy(stat_before, stat_after, cpus=("cpu0", "cpu1")):
    """Per core, between two copies of /proc/stat: (busy %, task %, steal %). Busy is everything
    but idle and iowait; task is user + nice + system, the time processes are charged with (irq
    and softirq are not charged to any process); steal is time the hypervisor gave elsewhere."""

    def load(path):
        out = {}
        for line in open(path):
            if re.match(r"^cpu\d+ ", line):
                name, *vals = line.split()
                vals = [int(v) for v in vals] + [0] * 8
                out[name] = vals
        return out

    a, b = load(stat_before), load(stat_after)
    out = []
    for cpu in cpus:
        if cpu not in a or cpu not in b:
            out.append((None, None, None))
            continue
        d = [y - x for x, y in zip(a[cpu], b[cpu])]
        total = sum(d[:8])
        if total <= 0:
            out.append((0.0, 0.0, 0.0))
            continue
        pct = lambda v: 100.0 * v / total
        out.append((pct(total - d[3] - d[4]), pct(d[0] + d[1] + d[2]), pct(d[7])))
    return out


COLUMNS = [
    "round", "proxy", "kind", "tool", "requests", "seconds", "rps", "cpu_ticks", "clk_tck",
    "cpu_s_per_10k", "non2xx", "socket_errors", "conns_opened", "conns_per_1k",
    "proxy_cpu_pct", "core0_busy", "core1_busy", "p50_ms", "p99_ms", "p999_ms", "target_rps",
    "cache_misses", "gen_cpu_pct", "upstream_cpu_pct", "other_core0", "other_core1", "clean",
    "sc_total", "sc_writes", "sc_reads", "sc_epoll", "sc_futex", "user_s_per_10k", "sys_s_per_10k",
    "faults", "cswitches",
]

# Syscall groups of the per-request diagnostic (perf stat tracepoint names, sys_enter_ stripped).
SYSCALL_GROUPS = {
    "sc_writes": ("write", "writev", "sendto", "sendmsg"),
    "sc_reads": ("read", "readv", "recvfrom", "recvmsg"),
    "sc_epoll": ("epoll_wait", "epoll_pwait", "epoll_ctl"),
    "sc_futex": ("futex",),
}


def syscalls_per_request(csv_path, seconds, warmup_output):
    """perf stat -x, counts over `seconds` of the warm-up, divided by the requests wrk completed in
    that time (its rate times `seconds`)."""
    rps = parse_wrk(warmup_output)["rps"]
    if not rps:
        return {}
    counts = {}
    for line in open(csv_path):
        parts = line.strip().split(",")
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        counts[parts[2].split(":")[-1].replace("sys_enter_", "")] = int(parts[0])
    requests = rps * seconds
    out = {"sc_total": counts.get("sys_enter", 0) / requests,
           "faults": counts.get("page-faults", 0) / requests,
           "cswitches": counts.get("context-switches", 0) / requests}
    for group, calls in SYSCALL_GROUPS.items():
        out[group] = sum(counts.get(c, 0) for c in calls) / requests
    return out

# A run is "clean" when CPU time we cannot attribute to our own processes stayed under this share
# of each core: on core 0 anything but the proxy, on core 1 anything but the load generator and
# the upstream (plus steal). Builds or tests running beside the benchmark show up here.
CONTENTION_PCT = float(os.environ.get("CONTENTION_PCT", "10"))


def fmt(v, digits=4):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def cmd_record(args):
    if args.tool == "wrk":
        r = parse_wrk(args.output)
    else:
        r = parse_oha(args.output)
    requests = r["requests"] or 0
    ticks = args.cpu_after - args.cpu_before
    cpu_per_10k = ticks / args.clk_tck / requests * 10000 if requests and ticks >= 0 else None
    conns = args.conns
    conns_per_1k = conns / requests * 1000 if (conns is not None and requests) else None
    (c0, task0, steal0), (c1, task1, steal1) = busy(args.stat_before, args.stat_after)
    seconds = args.t1 - args.t0
    cpu_pct = 100.0 * ticks / args.clk_tck / seconds if seconds > 0 else None
    gen_pct = args.gen_ms / 10.0 / seconds if seconds > 0 else None
    up_pct = 100.0 * args.upstream_ticks / args.clk_tck / seconds if seconds > 0 else None
    other0 = other1 = None
    if c0 is not None and cpu_pct is not None:
        other0 = max(0.0, task0 - cpu_pct) + steal0
        other1 = max(0.0, task1 - gen_pct - up_pct) + steal1
    clean = int(other0 is not None and other0 < CONTENTION_PCT and other1 < CONTENTION_PCT)
    row = {
        "round": args.round, "proxy": args.proxy, "kind": args.kind, "tool": args.tool,
        "requests": requests, "seconds": round(args.t1 - args.t0, 3), "rps": r["rps"],
        "cpu_ticks": ticks, "clk_tck": args.clk_tck, "cpu_s_per_10k": cpu_per_10k,
        "non2xx": r["non2xx"], "socket_errors": r["socket_errors"], "conns_opened": conns,
        "conns_per_1k": conns_per_1k, "proxy_cpu_pct": cpu_pct, "core0_busy": c0, "core1_busy": c1,
        "p50_ms": r.get("p50"), "p99_ms": r.get("p99"), "p999_ms": r.get("p999"),
        "target_rps": args.target_rps, "cache_misses": args.cache_misses,
        "gen_cpu_pct": gen_pct, "upstream_cpu_pct": up_pct, "other_core0": other0,
        "other_core1": other1, "clean": clean,
    }
    if args.user_ticks is not None and requests:
        row["user_s_per_10k"] = args.user_ticks / args.clk_tck / requests * 10000
        row["sys_s_per_10k"] = (ticks - args.user_ticks) / args.clk_tck / requests * 10000
    if args.syscalls:
        row.update(syscalls_per_request(args.syscalls, args.syscalls_seconds, args.warmup_output))
    for k in COLUMNS:
        row.setdefault(k, None)
    new = not os.path.exists(args.tsv)
    with open(args.tsv, "a", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        if new:
            w.writerow(COLUMNS)
        w.writerow([fmt(row[c]) for c in COLUMNS])
    # One progress line for the operator (stderr, so that stdout stays the report).
    bits = [f"round {args.round}", f"{args.proxy:<15}", f"{args.kind:<7}", f"{requests} req"]
    if r["rps"] is not None:
        bits.append(f"{r['rps']:.0f} req/s")
    if cpu_per_10k is not None and args.kind == "closed":
        bits.append(f"{cpu_per_10k:.3f} CPU s/10k")
    if conns is not None:
        bits.append(f"{conns} new upstream conns")
    if args.cache_misses is not None:
        bits.append(f"{args.cache_misses} session cache misses")
    if r.get("p99") is not None:
        bits.append(f"p50 {r['p50']:.2f} p99 {r['p99']:.2f} p99.9 {r['p999']:.2f} ms")
    if row.get("sc_total") is not None:
        bits.append(f"{row['sc_total']:.1f} syscalls/req")
    if c0 is not None:
        bits.append(f"proxy CPU {cpu_pct:.0f}%, generator {gen_pct:.0f}%, upstream {up_pct:.0f}%, "
                    f"other load {other0:.0f}%/{other1:.0f}%" + ("" if clean else " CONTENDED"))
    if r["non2xx"] or r["socket_errors"]:
        bits.append(f"NON-2XX {r['non2xx']} ERRORS {r['socket_errors']}")
        if r.get("errors_detail"):
            bits.append(json.dumps(r["errors_detail"]))
    print("  " + ", ".join(bits), file=sys.stderr)
    if args.require_requests and not requests:
        sys.exit(f"{args.output}: no completed requests; output follows\n" + open(args.output).read())


def cmd_hold(args):
    """Opens N connections, sends one valid PATCH on each, reads every answer, then keeps them
    all open until killed or for at most --seconds. Writes 'ok K' to --ready when done."""
    body = open(args.body, "rb").read()
    head = (
        f"PATCH {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        f"Authorization: Bearer {args.bearer}\r\nX-Session-Token: {args.session}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    socks, ok, statuses = [], 0, {}
    for _ in range(args.n):
        s = socket.create_connection((args.host, args.port), timeout=10)
        s.sendall(head + body)
        socks.append(s)
    for s in socks:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        header, _, rest = buf.partition(b"\r\n\r\n")
        status = header.split(b" ", 2)[1].decode() if header.count(b" ") >= 2 else "?"
        statuses[status] = statuses.get(status, 0) + 1
        m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", header)
        need = int(m.group(1)) if m else 0
        while len(rest) < need:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        if status.startswith("2"):
            ok += 1
    with open(args.ready, "w") as f:
        f.write(f"ok {ok} of {len(socks)} statuses {json.dumps(statuses)}\n")
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
    for s in socks:
        s.close()


# ---------------------------------------------------------------------------------------------
# The report

LABELS = {
    "nginx": "nginx proxy_pass",
    "haproxy": "HAProxy",
    "nginx-njs": "nginx + njs validating the contract",
    "caddy": "Caddy reverse_proxy (GOMAXPROCS=1)",
    "floor": "floor: hyper + rustls, no gateway logic",
    "gateway": "gateway (valid PATCH, upstream h1)",
    "gateway-h2": "gateway (valid PATCH, upstream h2)",
    "gateway-reject": "gateway (invalid body: 400 answered locally)",
    "gateway-miss": "gateway (valid PATCH, new session each request)",
    "nginx-log": "nginx proxy_pass, access log on (buffer=64k)",
    "gateway-log": "gateway (valid PATCH, access log on)",
    "gateway-trace5": "gateway (valid PATCH, tracing 5%)",
    "gateway-trace100": "gateway (valid PATCH, tracing 100%)",
}
ORDER = list(LABELS)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def num(v):
    return float(v) if v not in (None, "") else None


def f(v, digits=2, suffix=""):
    return "–" if v is None else f"{v:.{digits}f}{suffix}"


def load_meta(path):
    """run.sh's meta file: one 'key<TAB>value' a line; 'a.b' keys nest; 'note' repeats."""
    meta = {"notes": []}
    for line in open(path, encoding="utf-8"):
        key, _, value = line.rstrip("\n").partition("\t")
        if key == "note":
            meta["notes"].append(value)
            continue
        node = meta
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if re.fullmatch(r"-?\d+", value):
            value = int(value)
        elif re.fullmatch(r"-?\d+\.\d+", value):
            value = float(value)
        node[leaf] = value
    return meta


def cmd_report(args):
    rows = list(csv.DictReader(open(args.tsv), delimiter="\t"))
    meta = load_meta(args.meta)
    for r in rows:
        for k in COLUMNS:
            if k not in ("proxy", "kind", "tool", "round"):
                r[k] = num(r.get(k))
    proxies = [p for p in ORDER if any(r["proxy"] == p for r in rows)]

    def runs(p, kind):
        return [r for r in rows if r["proxy"] == p and r["kind"] == kind]

    def pick(rs):
        """The clean runs if there are any (and whether they were), else all of them."""
        clean = [r for r in rs if r["clean"] == 1]
        return (clean, True) if clean else (rs, False)

    def mark(value_text, clean):
        return value_text if clean or value_text == "–" else value_text + " §"

    def ratio_pairs(p, kind="closed"):
        """(ratio to nginx's CPU per request in the same round, both runs clean) per round."""
        nginx_runs = {r["round"]: r for r in runs("nginx", kind)}
        out = []
        for r in runs(p, kind):
            base = nginx_runs.get(r["round"])
            if base and base["cpu_s_per_10k"] and r["cpu_s_per_10k"] is not None:
                out.append((r["cpu_s_per_10k"] / base["cpu_s_per_10k"],
                            r["clean"] == 1 and base["clean"] == 1))
        return out

    def ratio(p, kind="closed"):
        pairs = ratio_pairs(p, kind)
        clean = [x for x, c in pairs if c]
        return (median(clean), True) if clean else (median(x for x, _ in pairs), False)

    def closed_value(p, key):
        rs, clean = pick(runs(p, "closed"))
        return median(r[key] for r in rs), clean

    def open_cell(p, kind):
        rs, clean = pick(runs(p, kind))
        if not rs:
            return "–"
        achieved = median(r["rps"] / r["target_rps"] for r in rs if r["rps"] and r["target_rps"])
        flag = ""
        if achieved is not None and achieved < 0.97:
            # Who ran out of CPU: the proxy (core 0) or the generator with the upstream (core 1)?
            who = []
            if (median(r["proxy_cpu_pct"] for r in rs) or 0) >= 90:
                who.append("p")
            if (median(r["core1_busy"] for r in rs) or 0) >= 95:
                who.append("g")
            flag = " ‡" + "".join(who)
        text = "{} / {} / {}{}".format(
            f(median(r["p50_ms"] for r in rs)),
            f(median(r["p99_ms"] for r in rs)),
            f(median(r["p999_ms"] for r in rs)),
            flag,
        )
        return mark(text, clean)

    def cpu50(p):
        rs, clean = pick(runs(p, "open50"))
        if not rs:
            return "–"
        rat, c_rat = ratio(p, "open50")
        return mark(f"{f(median(r['cpu_s_per_10k'] for r in rs), 3)} ({f(rat, 2)})", clean and c_rat)

    def user_sys(p, kind):
        rs, clean = pick(runs(p, kind))
        if not rs:
            return "–"
        return mark(f"{f(median(r['user_s_per_10k'] for r in rs), 3)} / "
                    f"{f(median(r['sys_s_per_10k'] for r in rs), 3)}", clean)

    open_kinds = [k for k in ("open25", "open50", "open75")
                  if any(r["kind"] == k for r in rows)] or ["open25", "open50", "open75"]

    def clean_count(p, kinds):
        rs = [r for r in rows if r["proxy"] == p and r["kind"] in kinds]
        return f"{sum(1 for r in rs if r['clean'] == 1)}/{len(rs)}" if rs else "–"

    out = []
    w = out.append
    w(f"# companies-gateway side-by-side load benchmark — {meta['started']}")
    w("")
    w(f"- Machine: {meta['nproc']} CPUs, {meta['cpu_model']}, kernel {meta['kernel']}, "
      f"{meta['mem']} RAM")
    w(f"- Versions: {meta['versions']}")
    w(f"- Command: `{meta['command']}`")
    w(f"- Rounds: {meta['rounds']} (proxies interleaved in each round; every figure is the median "
      f"over rounds). Closed loop: wrk -t1 -c{meta['conns']} -d{meta['duration']}s after a "
      f"{meta['warmup']}s warm-up. Open loop: oha -c{meta['conns']} -z{meta['open_duration']}s "
      f"--latency-correction at {meta['rates']} req/s = "
      f"{str(meta.get('open_pcts', '25 50 75')).replace(' ', '/')}% of nginx's maximum "
      f"({meta['nginx_max']:.0f} req/s in calibration).")
    w("- Pinning: each proxy `taskset -c 0` with one worker; the upstream and the load generators "
      f"`taskset -c 1`. h2 upstream: {meta.get('h2_upstream', '?')}.")
    w(f"- Medians are over *clean* runs (CPU time not charged to the bench's own processes under "
      f"{CONTENTION_PCT:.0f}% of each core) when a row has any; § marks a figure that only "
      f"contended runs gave.")
    w("")
    w("| proxy | req/s (closed loop) | CPU s / 10k req | ratio to nginx | "
      "p50 / p99 / p99.9 @25% (ms) | @50% (ms) | @75% (ms) | peak RSS MB | "
      "upstream conns / 1k req | non-2xx, errors | proxy CPU % | clean runs closed, open | "
      "CPU s / 10k @50% (ratio) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    peak = meta.get("peak_rss_kb", {})
    for p in proxies:
        rps, c_rps = closed_value(p, "rps")
        cpu, c_cpu = closed_value(p, "cpu_s_per_10k")
        rat, c_rat = ratio(p)
        conns, c_conns = closed_value(p, "conns_per_1k")
        pc, c_pc = closed_value(p, "proxy_cpu_pct")
        non2xx = sum(int(r["non2xx"] or 0) for r in rows if r["proxy"] == p)
        errs = sum(int(r["socket_errors"] or 0) for r in rows if r["proxy"] == p)
        rss = peak.get(p)
        w(f"| {LABELS[p]} | {mark(f(rps, 0), c_rps)} | {mark(f(cpu, 3), c_cpu)} | "
          f"{mark(f(rat, 3), c_rat)} | {open_cell(p, 'open25')} | {open_cell(p, 'open50')} | "
          f"{open_cell(p, 'open75')} | {f(rss / 1024 if rss else None, 1)} | "
          f"{mark(f(conns, 3), c_conns)} | {non2xx}, {errs} | {mark(f(pc, 0), c_pc)} | "
          f"{clean_count(p, ('closed',))}, {clean_count(p, ('open25', 'open50', 'open75'))} | "
          f"{cpu50(p)} |")
    w("")
    w("Per-round CPU ratios to nginx (same round; * = a contended run in the pair): " + "; ".join(
        f"{p}: " + ", ".join(f"{x:.3f}{'' if c else '*'}" for x, c in ratio_pairs(p))
        for p in proxies if p != "nginx"))
    if "floor" in proxies and "gateway" in proxies:
        # The stack's share of the gateway's CPU per request: floor over gateway, same round.
        floor_runs = {r["round"]: r for r in runs("floor", "closed")}
        pairs = [(floor_runs[r["round"]]["cpu_s_per_10k"] / r["cpu_s_per_10k"],
                  r["clean"] == 1 and floor_runs[r["round"]]["clean"] == 1)
                 for r in runs("gateway", "closed")
                 if r["round"] in floor_runs and r["cpu_s_per_10k"]
                 and floor_runs[r["round"]]["cpu_s_per_10k"] is not None]
        clean_pairs = [x for x, c in pairs if c]
        share = median(clean_pairs) if clean_pairs else median(x for x, _ in pairs)
        (g_rat, g_clean), (fl_rat, fl_clean) = ratio("gateway"), ratio("floor")
        if share is not None and g_rat is not None and fl_rat is not None:
            text = (f"The stack alone (floor: the gateway's hyper + tokio + rustls + mimalloc, "
                    f"forwarding with no gateway logic) costs {fl_rat:.3f} × nginx's CPU per "
                    f"request and the gateway {g_rat:.3f} ×; the floor is {100 * share:.0f}% of the "
                    f"gateway's CPU per request (same-round median), the gateway's own work the "
                    f"other {100 * (1 - share):.0f}%")
            if g_rat > 1 and fl_rat > 1:
                text += (f"; of the gateway's excess over nginx ({g_rat - 1:+.3f}), the stack "
                         f"accounts for {fl_rat - 1:+.3f} ({100 * (fl_rat - 1) / (g_rat - 1):.0f}%)")
            elif g_rat > 1:
                text += "; the stack alone is no dearer than nginx, so all of the gateway's excess is its own work"
            w(mark(text, bool(clean_pairs) and g_clean and fl_clean) + ".")
    miss = []
    for p in proxies:
        vals = [r["cache_misses"] / r["requests"] for r in runs(p, "closed")
                if r["cache_misses"] is not None and r["requests"]]
        if vals:
            miss.append(f"{p}: {median(vals):.3f}")
    if miss:
        w("Session-cache misses per request (gateway metric, median): " + "; ".join(miss) + ".")
    if "gateway-reject" in proxies:
        w("The rejection row's non-2xx are its expected 400s.")
    achieved = []
    for p in proxies:
        cells = []
        for kind in open_kinds:
            rs, _ = pick(runs(p, kind))
            cells.append(f(median(r["rps"] for r in rs), 0) if rs else "–")
        if any(c != "–" for c in cells):
            achieved.append(f"{p}: " + " / ".join(cells))
    if achieved:
        w("Open loop, achieved req/s at " + "/".join(k[4:] for k in open_kinds) + "% (target "
          + str(meta["rates"]).replace(" ", " / ")
          + "): " + "; ".join(achieved) + ". ‡: below 97% of the target rate, so the latencies are "
          "mostly queueing; ‡p: the proxy used ≥ 90% of its core (it is the limit); ‡g: core 1 (load "
          "generator + upstream) was ≥ 95% busy (the bench's limit, not the proxy's).")
    if any(r["sc_total"] is not None or r["user_s_per_10k"] is not None for r in rows):
        w("")
        w("Where the proxy's CPU goes: user and system CPU s / 10k req (closed loop, `/proc`), and "
          "syscalls per request (perf stat on syscall tracepoints, counted during each closed-loop "
          "warm-up; on loopback each write also runs the receiver's TCP input and wake-up in the "
          "writer's system time). Medians.")
        w("")
        w("| proxy | user s / 10k | sys s / 10k | syscalls / req | writes | reads | epoll | futex | "
          "context switches / req | page faults / req |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for p in proxies:
            rs, clean = pick(runs(p, "closed"))
            cells = [f(median(r[k] for r in rs), 3) for k in ("user_s_per_10k", "sys_s_per_10k")]
            cells += [f(median(r[k] for r in rs if r[k] is not None), 2)
                      for k in ("sc_total", "sc_writes", "sc_reads", "sc_epoll", "sc_futex",
                                "cswitches", "faults")]
            w(f"| {LABELS[p]} | " + " | ".join(mark(c, clean) for c in cells) + " |")
        w("")
    def achieved50(p, rs, clean):
        if not rs:
            return "–"
        rps = median(r["rps"] for r in rs)
        short = median(r["rps"] / r["target_rps"] for r in rs if r["rps"] and r["target_rps"])
        return mark(f(rps, 0) + (" ‡" if short is not None and short < 0.97 else ""), clean)

    if any(r["kind"] == "open50" for r in rows):
        w("CPU per request at the same request rate: every proxy was offered "
          f"{meta.get('rate50', '?')} req/s (50% of nginx's maximum) in the open loop, so none that kept up (no ‡) was "
          "saturated and the generator's core was equally idle for all; beside it, the closed-loop "
          "figure, where the proxy that saturates handles more events per wake-up. User / system "
          "CPU s / 10k req (`/proc`), ratios to nginx in the same round, medians.")
        w("")
        w("| proxy | closed loop: CPU s / 10k | user / sys | ratio to nginx | "
          "open loop @50%: CPU s / 10k | user / sys | ratio to nginx | achieved req/s |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for p in proxies:
            cpu, c_cpu = closed_value(p, "cpu_s_per_10k")
            rat, c_rat = ratio(p)
            rs, clean = pick(runs(p, "open50"))
            o_rat, c_o = ratio(p, "open50")
            w(f"| {LABELS[p]} | {mark(f(cpu, 3), c_cpu)} | {user_sys(p, 'closed')} | "
              f"{mark(f(rat, 3), c_rat)} | "
              f"{mark(f(median(r['cpu_s_per_10k'] for r in rs), 3), clean) if rs else '–'} | "
              f"{user_sys(p, 'open50')} | {mark(f(o_rat, 3), c_o) if rs else '–'} | "
              f"{achieved50(p, rs, clean)} |")
        w("")
        w("‡: under 97% of the target rate, the proxy (or core 1, see the main table's ‡p / ‡g) could not keep up, and its figure is "
          "not at the same rate as the others'.")
        w("")
    others = [r for r in rows if r["kind"] != "calibration" and r["clean"] != 1]
    if others:
        w(f"Contended runs ({len(others)} of {sum(1 for r in rows if r['kind'] != 'calibration')}), "
          "other load on core 0 / core 1 %: " + ", ".join(
              f"r{r['round']} {r['proxy']} {r['kind']} {f(r['other_core0'], 0)}/{f(r['other_core1'], 0)}"
              for r in others) + ".")
    w("")

    # Memory
    mem = meta.get("memory", {})
    if mem:
        w("## Gateway memory")
        w("")
        w("| state | VmRSS MB | VmHWM MB | bytes each (VmRSS over idle) | target |")
        w("|---|---:|---:|---:|---|")
        count = mem.get("sessions", {}).get("count", 1000000)
        idle_kb = mem.get("idle", {}).get("rss_kb")
        # Peak RSS targets: issues 7 and 16 for idle and connections, issue 20 for 1M sessions
        # (issue 7 asked for 200 MB there).
        for key, label, target, n in (
            ("idle", "idle (after start and one request)", 20, None),
            ("conns", "1,000 open keep-alive connections", 64, 1000),
            ("sessions", f"{count:,} cached sessions", 240, count),
        ):
            m = mem.get(key)
            if m:
                # The targets are for peak RSS: VmHWM.
                mem_verdict = "pass" if m["hwm_kb"] / 1024 <= target else "FAIL"
                if key == "sessions" and count != 1000000:
                    mem_verdict = "n/a (the target is for 1,000,000)"
                note = f" ({m['note']})" if m.get("note") else ""
                each = "–"
                if n and idle_kb is not None:
                    each = f"{(m['rss_kb'] - idle_kb) * 1024 / n:.0f} B a {'connection' if key == 'conns' else 'session'}"
                w(f"| {label}{note} | {m['rss_kb'] / 1024:.1f} | {m['hwm_kb'] / 1024:.1f} | "
                  f"{each} | ≤ {target} MB: {mem_verdict} |")
            elif key == "sessions":
                w(f"| {label} | – | – | – | ≤ {target} MB: not run (set BIG_CACHE=1) |")
        w("")

    # Targets
    w("## Targets")
    w("")

    def verdict(ok):
        return "–" if ok is None else ("pass" if ok else "FAIL")

    g, g_clean = ratio("gateway") if "gateway" in proxies else (None, True)
    rej, rej_clean = ratio("gateway-reject") if "gateway-reject" in proxies else (None, True)

    # p99 at 50%: the gateway's and nginx's runs of the same rounds, rounds where both were clean
    # if there are any.
    g50 = {r["round"]: r for r in runs("gateway", "open50")}
    n50 = {r["round"]: r for r in runs("nginx", "open50")}
    both = [k for k in g50 if k in n50]
    clean_both = [k for k in both if g50[k]["clean"] == 1 and n50[k]["clean"] == 1]
    use = clean_both or both
    gp = median(g50[k]["p99_ms"] for k in use)
    np_ = median(n50[k]["p99_ms"] for k in use)
    gp_clean = np_clean = bool(clean_both)
    conns, conns_clean = closed_value("gateway", "conns_per_1k") if "gateway" in proxies else (None, True)

    def v2(ok, clean):
        text = verdict(ok)
        return text if clean or ok is None else text + " (contended runs only)"

    w("| target | measured | verdict |")
    w("|---|---:|---|")
    # Issue 20's targets. The logged row against nginx with its access log on, same round.
    def ratio_to(p, base, kind="closed"):
        base_runs = {r["round"]: r for r in runs(base, kind)}
        pairs = [(r["cpu_s_per_10k"] / base_runs[r["round"]]["cpu_s_per_10k"],
                  r["clean"] == 1 and base_runs[r["round"]]["clean"] == 1)
                 for r in runs(p, kind)
                 if r["round"] in base_runs and r["cpu_s_per_10k"] is not None
                 and base_runs[r["round"]]["cpu_s_per_10k"]]
        clean = [x for x, c in pairs if c]
        return (median(clean), True) if clean else (median(x for x, _ in pairs), False)

    logged, logged_clean = (ratio_to("gateway-log", "nginx-log")
                            if "gateway-log" in proxies and "nginx-log" in proxies else (None, True))
    g50_ratio, g50_clean = ratio("gateway", "open50") if "gateway" in proxies else (None, True)
    wins = sum(1 for k in use if g50[k]["p99_ms"] is not None and n50[k]["p99_ms"] is not None
               and g50[k]["p99_ms"] <= n50[k]["p99_ms"])
    w(f"| CPU per forwarded PATCH vs nginx, access log off, median ≤ 1.15 | {f(g, 3)} | "
      f"{v2(None if g is None else g <= 1.15, g_clean)} |")
    w(f"| the same at 50% of nginx's maximum rate (open loop) | {f(g50_ratio, 3)} | "
      f"{v2(None if g50_ratio is None else g50_ratio <= 1.15, g50_clean)} |")
    w(f"| CPU per forwarded PATCH vs nginx, access log on for both, median ≤ 1.15 | {f(logged, 3)} | "
      f"{v2(None if logged is None else logged <= 1.15, logged_clean)} |")
    w(f"| moonshot: ratio ≤ 0.67 | {f(g, 3)} | {v2(None if g is None else g <= 0.67, g_clean)} |")
    w(f"| CPU per local rejection ≤ 0.45 of nginx's per forwarded request | {f(rej, 3)} | "
      f"{v2(None if rej is None else rej <= 0.45, rej_clean)} |")
    w(f"| p99 at 50% of nginx's max rate ≤ nginx's (same rounds; issue 20: in 4 of 5 runs) | "
      f"{f(gp)} ms vs {f(np_)} ms; ≤ in {wins} of {len(use)} rounds | "
      + (f"{v2(None if gp is None or np_ is None else gp <= np_, True)} |" if gp_clean else
         "inconclusive: no round in which both runs were clean |"))
    for peer in ("nginx-njs", "caddy"):
        if peer in proxies and "gateway" in proxies:
            # Where the gateway stands against what a team would otherwise run (no target).
            x, x_clean = ratio_to("gateway", peer)
            y, y_clean = ratio_to("gateway", peer, "open50")
            w(f"| gateway's CPU per forwarded PATCH over {LABELS[peer]}'s (closed loop; at 50%) | "
              f"{f(x, 3)}; {f(y, 3)} | no target{'' if x_clean else ' (contended runs only)'} |")
    w(f"| upstream connections opened at steady state ≤ 1 / 1,000 req | {f(conns, 3)} | "
      f"{v2(None if conns is None else conns <= 1.0, conns_clean)} |")
    w("")
    if meta.get("notes"):
        w("## Notes")
        w("")
        for n in meta["notes"]:
            w(f"- {n}")
        w("")
    w(f"Raw measurements: `{meta['raw']}`. Run time: {meta.get('elapsed', '?')}.")
    print("\n".join(out))


def perf_group(symbol):
    """Groups one perf symbol: kernel, allocator, libc copies, or the Rust crate (and, for the
    gateway, its module) the code belongs to."""
    kind, _, name = symbol.partition(" ")
    if kind == "[k]":
        return "kernel: syscalls, TCP over loopback, wake-ups"
    name = name.strip()
    for prefix in ("malloc", "_int_", "cfree", "free", "realloc", "calloc", "__libc_malloc",
                   "__libc_free", "tcache", "malloc_consolidate", "unlink_chunk", "sysmalloc"):
        if name.startswith(prefix):
            return "glibc malloc / free"
    if re.match(r"__(memmove|memcpy|memset|memcmp|memchr|strlen)", name) or name in ("memcpy", "memmove"):
        return "glibc memcpy / memmove / memset"
    if "clock_gettime" in name:
        return "clock_gettime (vDSO)"
    if name.startswith("ring_core"):
        return "ring (TLS crypto)"
    if name.startswith("ngx_"):
        return "nginx"
    if re.match(r"(SSL|ssl|tls|EVP|evp|aes|gcm|CRYPTO|OPENSSL|ossl|BIO|bio|ERR|OBJ|EC_|BN_|"
                r"sha|ChaCha|Poly1305|x25519)", name):
        return "OpenSSL"
    if re.match(r"(h1_|h2_|htx_|http_|sc_|se_|si_|stream_|process_stream|conn_|sock_|fd_|"
                r"task_|tasklet|run_tasks|pool_|b_|channel_|ssl_sock|srv_|be_|fe_|listener_)", name):
        return "haproxy (by name)"
    m = re.match(r"^core::ptr::drop_in_place<(.*)>$", name)
    if m:
        name = m.group(1)
    m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)::([A-Za-z_][A-Za-z0-9_]*)", name)
    if not m:
        return "other (libc, or a library without symbols, e.g. libcrypto)"
    crate, module = m.group(1), m.group(2)
    if crate == "ring":
        return "ring (TLS crypto)"
    if crate == "companies_gateway":
        return f"gateway: {module}"
    if crate in ("core", "alloc", "std"):
        if "sip::Hasher" in name:
            return "std SipHash (HashMap hashing)"
        return "core / alloc / std"
    return crate


def cmd_otlp_sink(args):
    """An OTLP/HTTP collector that takes every export and keeps nothing: the traced rows' peer."""
    import http.server

    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Sink).serve_forever()


def cmd_perf_groups(args):
    totals = {}
    for line in open(args.file, encoding="utf-8", errors="replace"):
        m = re.match(r"^\s*([\d.]+)%\s+(\[[k.]\]\s+.*?)\s*(-\s+-)?\s*$", line)
        if not m:
            continue
        group = perf_group(m.group(2))
        totals[group] = totals.get(group, 0.0) + float(m.group(1))
    user = sum(v for k, v in totals.items() if not k.startswith("kernel"))
    print("| where | % of samples | % of user-space samples |")
    print("|---|---:|---:|")
    for group, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
        if pct < 0.3:
            continue
        share = "" if group.startswith("kernel") else f"{100 * pct / user:.1f}"
        print(f"| {group} | {pct:.1f} | {share} |")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ports"); p.add_argument("n", type=int); p.set_defaults(fn=cmd_ports)
    p = sub.add_parser("jwt"); p.set_defaults(fn=cmd_jwt)
    p = sub.add_parser("nginx-string"); p.add_argument("file"); p.set_defaults(fn=cmd_nginx_string)
    p = sub.add_parser("render")
    p.add_argument("template"); p.add_argument("out"); p.add_argument("pairs", nargs="*")
    p.set_defaults(fn=cmd_render)
    p = sub.add_parser("metric"); p.add_argument("url"); p.add_argument("name")
    p.add_argument("labels", nargs="?", default="")
    p.set_defaults(fn=cmd_metric)
    p = sub.add_parser("rss"); p.add_argument("pids", nargs="+"); p.set_defaults(fn=cmd_rss)
    p = sub.add_parser("new-conns")
    p.add_argument("log"); p.add_argument("port")
    p.add_argument("t0", type=float); p.add_argument("t1", type=float)
    p.set_defaults(fn=cmd_new_conns)
    p = sub.add_parser("record")
    for name in ("tsv", "round", "proxy", "kind", "tool", "output", "stat-before", "stat-after"):
        p.add_argument("--" + name, required=True)
    p.add_argument("--cpu-before", type=int, required=True)
    p.add_argument("--cpu-after", type=int, required=True)
    p.add_argument("--clk-tck", type=int, required=True)
    p.add_argument("--t0", type=float, required=True)
    p.add_argument("--t1", type=float, required=True)
    p.add_argument("--conns", type=int)
    p.add_argument("--cache-misses", type=int)
    p.add_argument("--gen-ms", type=int, required=True)
    p.add_argument("--user-ticks", type=int)
    p.add_argument("--syscalls")
    p.add_argument("--syscalls-seconds", type=float)
    p.add_argument("--warmup-output")
    p.add_argument("--upstream-ticks", type=int, required=True)
    p.add_argument("--target-rps", type=float)
    p.add_argument("--require-requests", action="store_true")
    p.set_defaults(fn=cmd_record)
    p = sub.add_parser("hold")
    for name in ("host", "path", "body", "bearer", "session", "ready"):
        p.add_argument("--" + name, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seconds", type=float, default=60)
    p.set_defaults(fn=cmd_hold)
    p = sub.add_parser("otlp-sink"); p.add_argument("port", type=int); p.set_defaults(fn=cmd_otlp_sink)
    p = sub.add_parser("perf-groups"); p.add_argument("file"); p.set_defaults(fn=cmd_perf_groups)
    p = sub.add_parser("report"); p.add_argument("tsv"); p.add_argument("meta")
    p.set_defaults(fn=cmd_report)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
