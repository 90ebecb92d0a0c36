#!/usr/bin/env python3
"""Checks that a validating peer gives the gateway's verdicts before run.sh times it.

    python3 verdicts.py --gateway URL --peer URL --bearer B --session S --body FILE [--out FILE]

URL is http://127.0.0.1:PORT (no path). Sends every case below to both and compares the status
codes (so also valid vs invalid: 200 = forwarded); prints one line per case and exits 1 if any
differs. The cases are the contract's own: its example request (tests/data/shared/contract/
examples/), and the valid and invalid requests of the README's contract section and of
tests/contract.rs — each rule of openapi.yaml's update-contact operation broken once (path
parameters, the three headers, and the body's schema with gateway.md §2's tightenings), and values
just inside each limit. Standard library only.
"""
import argparse
import http.client
import json
import sys
import urllib.parse

PATH = "/companies/v2/rs/{}/contacts/{}"


def cases(example, bearer, session):
    """(name, path, headers as a list of pairs, body bytes); the headers of a valid request unless
    a case says otherwise."""
    auth = ("Authorization", f"Bearer {bearer}")
    tok = ("X-Session-Token", session)
    ctype = ("Content-Type", "application/json")
    ok = PATH.format(1, 2)
    base = json.loads(example)

    def body(**over):
        d = dict(base)
        for k, v in over.items():
            if v is DROP:
                d.pop(k, None)
            else:
                d[k] = v
        return json.dumps(d).encode()

    out = [
        ("the contract's example", ok, [auth, tok, ctype], example),
        ("notify only", ok, [auth, tok, ctype], b'{"notify":false}'),
        ("email and comment null", ok, [auth, tok, ctype], body(email=None, comment=None)),
        ("name of 250 code points (2 bytes each)", ok, [auth, tok, ctype], body(name="é" * 250)),
        ("name of 250 astral code points", ok, [auth, tok, ctype], body(name="😀" * 250)),
        ("five phones of 50", ok, [auth, tok, ctype], body(phones=["9" * 50] * 5)),
        ("comment of 2500", ok, [auth, tok, ctype], body(comment="c" * 2500)),
        ("no phones", ok, [auth, tok, ctype], body(phones=[])),
        ("email with a plus and subdomain", ok, [auth, tok, ctype], body(email="a.b+c@mail.example.co.uk")),
        ("negative and int64-max ids", PATH.format(-5, 9223372036854775807), [auth, tok, ctype], example),
        ("int64-min company id", PATH.format(-9223372036854775808, 0), [auth, tok, ctype], example),
        ("charset=utf-8", ok, [auth, tok, ("Content-Type", "application/json; charset=utf-8")], example),
        ("Content-Type in upper case", ok, [auth, tok, ("Content-Type", "Application/JSON")], example),
        ("bearer scheme in lower case", ok, [("Authorization", f"bearer {bearer}"), tok, ctype], example),
        ("bearer token with padding", ok, [("Authorization", "Bearer abc+/=="), tok, ctype], example),
        ("a comment that looks like a key", ok, [auth, tok, ctype], b'{"notify":true,"comment":"a,\\"notify\\": 1, {\\"x\\":"}'),
        ("blanks around keys and values", ok, [auth, tok, ctype], b' {\n "notify" :\ttrue ,\r\n"name": "n" } '),
        # invalid: headers (stages 1-3)
        ("no Authorization", ok, [tok, ctype], example),
        ("Basic Authorization", ok, [("Authorization", "Basic dXNlcjpwYXNz"), tok, ctype], example),
        ("Bearer without a token", ok, [("Authorization", "Bearer "), tok, ctype], example),
        ("Bearer token with a comma", ok, [("Authorization", "Bearer ab,c"), tok, ctype], example),
        # nginx's core refuses a repeated Authorization header (400) before njs runs: the same
        # verdict (invalid), another status. Listed in NGINX_CORE below.
        ("two Authorization headers", ok, [auth, auth, tok, ctype], example),
        ("no X-Session-Token", ok, [auth, ctype], example),
        ("X-Session-Token over 4096 bytes", ok, [auth, ("X-Session-Token", "t" * 4097), ctype], example),
        ("two X-Session-Token headers", ok, [auth, tok, tok, ctype], example),
        ("no Content-Type", ok, [auth, tok], example),
        ("text/plain", ok, [auth, tok, ("Content-Type", "text/plain")], example),
        ("charset=latin1", ok, [auth, tok, ("Content-Type", "application/json; charset=latin1")], example),
        ("no Authorization and a bad body", ok, [tok, ctype], b'{"notify":"yes"}'),
        # invalid: path parameters
        ("company id not a number", PATH.format("abc", 2), [auth, tok, ctype], example),
        ("company id past int64", PATH.format(9223372036854775808, 2), [auth, tok, ctype], example),
        ("contact id a decimal", PATH.format(1, "2.5"), [auth, tok, ctype], example),
        ("contact id empty-ish", PATH.format(1, "x1"), [auth, tok, ctype], example),
        # invalid: body
        ("notify missing", ok, [auth, tok, ctype], body(notify=DROP)),
        ("notify a string", ok, [auth, tok, ctype], b'{"notify":"yes"}'),
        ("name of 251", ok, [auth, tok, ctype], body(name="n" * 251)),
        ("name null", ok, [auth, tok, ctype], body(name=None)),
        ("email without an @", ok, [auth, tok, ctype], body(email="not-an-email")),
        ("email with a display name", ok, [auth, tok, ctype], body(email="Ann <ann@example.com>")),
        ("email domain without a dot", ok, [auth, tok, ctype], body(email="ann@localhost")),
        ("email domain literal", ok, [auth, tok, ctype], body(email="ann@[127.0.0.1]")),
        ("email of 251", ok, [auth, tok, ctype], body(email="a" * 60 + "@" + "b" * 186 + ".com")),
        ("six phones", ok, [auth, tok, ctype], body(phones=["1"] * 6)),
        ("phone of 51", ok, [auth, tok, ctype], body(phones=["9" * 51])),
        ("phone a number", ok, [auth, tok, ctype], body(phones=[5])),
        ("phones a string", ok, [auth, tok, ctype], body(phones="555")),
        ("comment of 2501", ok, [auth, tok, ctype], body(comment="c" * 2501)),
        ("unknown field", ok, [auth, tok, ctype], body(extra=1)),
        ("duplicate key", ok, [auth, tok, ctype], b'{"notify":true,"notify":false}'),
        ("duplicate key spelt with an escape", ok, [auth, tok, ctype], b'{"notify":true,"no\\u0074ify":false}'),
        ("a nested object", ok, [auth, tok, ctype], b'{"notify":true,"name":{"a":1,"a":2}}'),
        ("not JSON", ok, [auth, tok, ctype], b'{"notify":tru'),
        ("trailing garbage", ok, [auth, tok, ctype], b'{"notify":true} x'),
        ("an array", ok, [auth, tok, ctype], b'[{"notify":true}]'),
        ("empty body", ok, [auth, tok, ctype], b""),
        ("several violations", ok, [auth, tok, ctype], body(notify=1, name="n" * 300, phones=["1"] * 7)),
    ]
    return out


DROP = object()

# Cases that nginx itself answers before the validator runs: there the peer must give the same
# verdict (invalid, a 4xx) but may give its own status code.
NGINX_CORE = {"two Authorization headers"}


def send(base, path, headers, body):
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.putrequest("PATCH", path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--bearer", required=True)
    ap.add_argument("--session", required=True)
    ap.add_argument("--body", required=True)
    ap.add_argument("--out")
    a = ap.parse_args()
    example = open(a.body, "rb").read()
    lines, bad, core, n_valid = [], 0, 0, 0
    for name, path, headers, body in cases(example, a.bearer, a.session):
        g = send(a.gateway, path, headers, body)
        p = send(a.peer, path, headers, body)
        n_valid += g == 200
        if g == p:
            mark = "ok"
        elif name in NGINX_CORE and g != 200 and 400 <= p < 500:
            mark, core = "ok (verdict; nginx's core answers this one)", core + 1
        else:
            mark, bad = "DIFFERS", bad + 1
        lines.append(f"{mark}\tgateway {g}\tpeer {p}\t{name}")
    total = len(lines)
    lines.append(f"{total - bad - core} of {total} cases give the gateway's status code, {core} its "
                 f"verdict only (nginx's core answers them), {bad} differ; the gateway found "
                 f"{n_valid} valid, {total - n_valid} invalid")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if a.out:
        open(a.out, "w").write(text)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
