#!/usr/bin/env python3
"""Memory per idle keep-alive connection (idle.sh is the caller). Standard library only.

Against a running gateway (its PID and port): one request, wait, read VmRSS (the baseline with 0
idle connections); then open N connections, send one valid PATCH on each and read its answer
(in batches, spread over source addresses 127.0.1.1-127.0.1.64 so that a per-client cap does not
apply), wait, read VmRSS and VmHWM again, and print one JSON line with the figures. Every loop is
bounded; it closes all its connections before it exits. Loopback only.
"""

import argparse
import json
import re
import resource
import socket
import ssl
import struct
import sys
import time

SOURCES = 64  # source addresses 127.0.1.1-127.0.1.SOURCES


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        sys.exit(f"RLIMIT_NOFILE is {soft}; {need} needed (raise the hard limit)")


def h1_request(args, body):
    return (
        f"PATCH {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
        f"Authorization: Bearer {args.bearer}\r\nX-Session-Token: {args.session}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def read_h1_response(s):
    """Reads one response with a Content-Length body; returns its status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return "eof"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(rest) < need:
        chunk = s.recv(65536)
        if not chunk:
            return "eof"
        rest += chunk
    parts = head.split(b" ", 2)
    return parts[1].decode() if len(parts) >= 2 else "?"


# h2 with prior knowledge, by hand: HPACK literals without indexing, no Huffman.
def hpack_str(b):
    # The length as an HPACK integer with a 7-bit prefix (RFC 7541 5.1), H bit clear.
    n, out = len(b), b""
    if n < 127:
        return bytes([n]) + b
    out, n = bytes([127]), n - 127
    while n >= 128:
        out += bytes([n % 128 + 128])
        n //= 128
    return out + bytes([n]) + b


def hpack_headers(pairs):
    out = b""
    for name, value in pairs:
        out += b"\x00" + hpack_str(name) + hpack_str(value)
    return out


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_request(args, body):
    headers = hpack_headers([
        (b":method", b"PATCH"), (b":scheme", b"http"), (b":path", args.path.encode()),
        (b":authority", f"127.0.0.1:{args.port}".encode()),
        (b"authorization", f"Bearer {args.bearer}".encode()),
        (b"x-session-token", args.session.encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ])
    return (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + frame(0x4, 0, 0, b"")           # SETTINGS
        + frame(0x1, 0x4, 1, headers)     # HEADERS, END_HEADERS
        + frame(0x0, 0x1, 1, body)        # DATA, END_STREAM
    )


def read_h2_response(s):
    """Reads frames until stream 1 ends; acknowledges SETTINGS. Returns ':status' or 'eof'."""
    buf, status_code = b"", "?"
    while True:
        while len(buf) < 9:
            chunk = s.recv(65536)
            if not chunk:
                return "eof"
            buf += chunk
        length = int.from_bytes(buf[:3], "big")
        kind, flags = buf[3], buf[4]
        stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        while len(buf) < 9 + length:
            chunk = s.recv(65536)
            if not chunk:
                return "eof"
            buf += chunk
        payload, buf = buf[9:9 + length], buf[9 + length:]
        if kind == 0x4 and not flags & 0x1:
            s.sendall(frame(0x4, 0x1, 0, b""))
        if kind == 0x1 and stream == 1:
            # :status is the first field; the gateway (hyper) indexes it: 0x88 is 200.
            status_code = {0x88: "200", 0x89: "204", 0x8C: "400", 0x8D: "404", 0x8E: "500"}.get(payload[0], "?") if payload else "?"
        if kind == 0x7:
            return "goaway"
        if stream == 1 and kind in (0x0, 0x1) and flags & 0x1:
            return status_code


def connect(args, i, ctx):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(30)
    s.bind((f"127.0.1.{i % SOURCES + 1}", 0))
    s.connect(("127.0.0.1", args.port))
    if ctx is not None:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    return s


def main():
    ap = argparse.ArgumentParser()
    for name in ("path", "body", "bearer", "session"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--mode", choices=("h1", "h2", "tls"), default="h1")
    ap.add_argument("--ca", help="CA file (mode tls)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait before each reading")
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()
    if args.n <= 0 or args.n > 100_000:
        sys.exit("--n must be in 1..100000")
    raise_nofile(args.n + 256)
    body = open(args.body, "rb").read()
    ctx = None
    if args.mode == "tls":
        ctx = ssl.create_default_context(cafile=args.ca)
        ctx.set_alpn_protocols(["http/1.1"])
    request, read_response = (h2_request, read_h2_response) if args.mode == "h2" else (h1_request, read_h1_response)
    payload = request(args, body)

    # The baseline: the same process after one request on a connection that is then closed.
    s = connect(args, 0, ctx)
    s.sendall(payload)
    first = read_response(s)
    s.close()
    if first != "200":
        sys.exit(f"the first request got {first}, expected 200")
    time.sleep(args.settle)
    base = status(args.pid)

    socks, statuses = [], {}
    t0 = time.monotonic()
    try:
        for start in range(0, args.n, args.batch):
            batch = [connect(args, i, ctx) for i in range(start, min(start + args.batch, args.n))]
            for s in batch:
                s.sendall(payload)
            for s in batch:
                st = read_response(s)
                statuses[st] = statuses.get(st, 0) + 1
            socks.extend(batch)
        opened_in = time.monotonic() - t0
        time.sleep(args.settle)
        held = status(args.pid)
        # Still open? A closed connection reads EOF at once; an open idle one times out.
        alive = 0
        for s in socks[:: max(1, len(socks) // 100)]:
            s.settimeout(0.01)
            try:
                alive += 0 if s.recv(1) == b"" else 1
            except (socket.timeout, ssl.SSLError, BlockingIOError):
                alive += 1
            except OSError:
                pass
        sampled = len(socks[:: max(1, len(socks) // 100)])
    finally:
        for s in socks:
            s.close()
    per_conn = (held["VmRSS"] - base["VmRSS"]) / args.n
    print(json.dumps({
        "mode": args.mode, "n": args.n, "statuses": statuses,
        "base_rss_kb": base["VmRSS"], "held_rss_kb": held["VmRSS"], "held_hwm_kb": held["VmHWM"],
        "kb_per_conn": round(per_conn, 2), "opened_in_s": round(opened_in, 1),
        "alive_sampled": f"{alive}/{sampled}",
    }))


if __name__ == "__main__":
    main()
