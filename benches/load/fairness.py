#!/usr/bin/env python3
"""Clients for fairness.sh: a greedy client from one loopback address and a legitimate one from
another (standard library only). Every loop is bounded in time and count; loopback only.

  fairness.py slow-headers ADDR PORT --from 127.0.0.1 --conns 600 --seconds 30
  fairness.py stalled-bodies ADDR PORT --from 127.0.0.1 --conns 1024 --seconds 30 --path P
  fairness.py legit ADDR PORT --from 127.0.0.2 --rate 40 --seconds 20 --path P --body F ...

Each prints one JSON object with its counts (and, for legit, the latency percentiles).
"""

import argparse
import asyncio
import json
import resource
import time

MAX_RECONNECTS = 1_000_000  # a bound on every attack loop, beside its deadline


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def open_from(src, host, port, timeout=5.0):
    return await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(src, 0)), timeout
    )


async def attacker(args, stats, deadline, send_head, trickle):
    """One attacking connection, reconnecting whenever the gateway closes it."""
    for _ in range(MAX_RECONNECTS):
        if time.monotonic() >= deadline:
            return
        try:
            reader, writer = await open_from(args.source, args.addr, args.port)
        except (OSError, asyncio.TimeoutError):
            stats["connect_errors"] += 1
            await asyncio.sleep(args.backoff)
            continue
        stats["connections"] += 1
        answered = False
        try:
            writer.write(send_head)
            await writer.drain()
            while time.monotonic() < deadline:
                # Nothing more than a trickle; the gateway's answer (or close) ends the round.
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                except asyncio.TimeoutError:
                    if trickle:
                        writer.write(trickle)
                        await writer.drain()
                    continue
                if not data:
                    break
                answered = True
                status = data[9:12].decode(errors="replace")
                stats["status_" + status] = stats.get("status_" + status, 0) + 1
                break
        except OSError:
            pass
        finally:
            writer.close()
        if not answered and time.monotonic() < deadline:
            stats["closed_unanswered"] += 1
        await asyncio.sleep(args.backoff)


async def attack(args, send_head, trickle):
    raise_nofile()
    stats = {"connections": 0, "connect_errors": 0, "closed_unanswered": 0}
    deadline = time.monotonic() + args.seconds
    tasks = [
        asyncio.create_task(attacker(args, stats, deadline, send_head, trickle))
        for _ in range(args.conns)
    ]
    await asyncio.gather(*tasks)
    stats["conns"] = args.conns
    print(json.dumps(stats))


def slow_headers(args):
    # A head that never ends: a header line, then one more header byte a second.
    head = "GET /slow HTTP/1.1\r\nHost: gw\r\nX-Slow: a".encode()
    asyncio.run(attack(args, head, b"a"))


def stalled_bodies(args):
    # A complete head announcing the largest body, then 1 KiB of it, then nothing.
    head = (
        f"PATCH {args.path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {args.bearer}\r\n"
        f"X-Session-Token: {args.session}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {args.body_bytes}\r\n\r\n"
    ).encode() + b"{" + b" " * 1023
    asyncio.run(attack(args, head, b""))


async def legit_one(args, request, lat, stats):
    t0 = time.monotonic()
    try:
        reader, writer = await open_from(args.source, args.addr, args.port)
    except (OSError, asyncio.TimeoutError):
        stats["connect_errors"] += 1
        return
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), args.timeout)
        status = head[9:12].decode(errors="replace")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await asyncio.wait_for(reader.readexactly(length), args.timeout)
        lat.append(time.monotonic() - t0)
        stats["status_" + status] = stats.get("status_" + status, 0) + 1
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
        stats["errors"] += 1
    finally:
        writer.close()


async def legit_main(args):
    raise_nofile()
    body = open(args.body, "rb").read()
    request = (
        f"PATCH {args.path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {args.bearer}\r\n"
        f"X-Session-Token: {args.session}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    lat, stats = [], {"connect_errors": 0, "errors": 0}
    total = int(args.rate * args.seconds)
    start = time.monotonic()
    tasks = []
    # Open loop: each request at its due time, on a new connection (accept is part of the test).
    for i in range(total):
        due = start + i / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(legit_one(args, request, lat, stats)))
    await asyncio.gather(*tasks)
    lat.sort()

    def pct(p):
        if not lat:
            return None
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)

    ok = sum(v for k, v in stats.items() if k.startswith("status_2"))
    stats.update(
        sent=total,
        ok_2xx=ok,
        ok_share=round(ok / total, 4) if total else None,
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        max_ms=round(lat[-1] * 1000, 2) if lat else None,
    )
    print(json.dumps(stats))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("slow-headers", "stalled-bodies", "legit"):
        p = sub.add_parser(name)
        p.add_argument("addr")
        p.add_argument("port", type=int)
        p.add_argument("--from", dest="source", required=True)
        p.add_argument("--seconds", type=float, required=True)
        p.add_argument("--path", default="/companies/v2/rs/1/contacts/2")
        p.add_argument("--bearer", default="x")
        p.add_argument("--session", default="x")
        if name == "legit":
            p.add_argument("--rate", type=float, default=40)
            p.add_argument("--body", required=True)
            p.add_argument("--timeout", type=float, default=5.0)
        else:
            p.add_argument("--conns", type=int, required=True)
            p.add_argument("--backoff", type=float, default=0.2)
            p.add_argument("--body-bytes", type=int, default=65536)
    args = ap.parse_args()
    if args.cmd == "slow-headers":
        slow_headers(args)
    elif args.cmd == "stalled-bodies":
        stalled_bodies(args)
    else:
        asyncio.run(legit_main(args))


if __name__ == "__main__":
    main()
