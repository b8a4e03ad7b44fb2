"""HTTP/1.1 server (lua/ringline/http/server.lua, scripts/http.lua): real
clients (curl) and raw sockets.

Keep-alive, pipelining (every split position of a request pair, one byte per
packet), request bodies (Content-Length, chunked, Expect: 100-continue),
HEAD, the error statuses (400, 404, 408, 413, 431, 501, 505), connection
close rules (HTTP/1.0, Connection: close), idle and request timeouts, and
static files: content types, bytes, and refusal of every traversal attempt.

The timeout tests use tests/fixtures/http/timeouts.lua (timeouts set from
the environment: 300 ms for the one under test).
"""

import os
import re
import shutil
import socket
import subprocess
import threading
import time

from harness import (EnvCtx, Server, check, connect, fail, read_until_closed)

HTTP_LUA = "scripts/http.lua"
TIMEOUTS_LUA = "tests/fixtures/http/timeouts.lua"
HELLO = b"hello world\n"
FIXTURE_TIMEOUT = 0.3            # seconds: the timeout under test in timeouts.lua
MAX_BODY = 1 << 20
MAX_HEAD = 8192


# --------------------------------------------------------------------------
# Servers

def http_server(ctx, script=HTTP_LUA, root=None, args=(), env=None):
    """Start script (default scripts/http.lua) on a free port; the static
    root is root, or an empty temp dir.  Stopped and checked at teardown."""
    if root is None:
        root = os.path.join(ctx.tmpdir, "empty-root")
        os.makedirs(root, exist_ok=True)
    extra = {"RINGLINE_HTTP_ROOT": root}
    extra.update(env or {})
    s = Server(EnvCtx(ctx, extra), script=script, args=args)
    ctx.servers.append(s)
    s.start()
    return s


def base_url(srv):
    return f"http://127.0.0.1:{srv.port}"


# --------------------------------------------------------------------------
# A raw HTTP client connection

class Resp:
    def __init__(self, status, reason, headers, body, raw):
        self.status = status
        self.reason = reason
        self.headers = headers          # [(name, value)] as received
        self.body = body
        self.raw = raw                  # head + body bytes exactly as received

    def header(self, name):
        vals = [v for n, v in self.headers if n.lower() == name.lower()]
        return vals[-1] if vals else None

    def __repr__(self):
        return f"<{self.status} {self.reason} {self.headers} body={self.body[:60]!r}>"


class Conn:
    """A raw connection: send bytes, read responses (framed by their
    Content-Length; the server sends one on every response)."""

    def __init__(self, srv, ctx, timeout=5.0, rcvbuf=None):
        self.ctx = ctx
        self.timeout = timeout * ctx.factor
        self.sock = connect(srv.addr, self.timeout, rcvbuf=rcvbuf)
        self.buf = bytearray()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline, what):
        left = deadline - time.monotonic()
        if left <= 0:
            fail(f"timed out waiting for {what}; have {bytes(self.buf[:200])!r}")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 18)
        except socket.timeout:
            return
        except ConnectionResetError:
            fail(f"connection reset while waiting for {what}; have {bytes(self.buf[:200])!r}")
        if not chunk:
            fail(f"EOF while waiting for {what}; have {bytes(self.buf[:200])!r}")
        self.buf += chunk

    def read_response(self, head=False, timeout=None):
        """One response; head=True for a response to HEAD (no body)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            check(len(self.buf) < 65536, f"response head too long: {bytes(self.buf[:200])!r}")
            self._fill(deadline, "a response head")
        raw_head = bytes(self.buf[:i + 4])
        del self.buf[:i + 4]
        lines = raw_head[:-4].split(b"\r\n")
        m = re.fullmatch(rb"HTTP/1\.1 (\d{3}) ([^\r\n]*)", lines[0])
        check(m, f"bad status line {lines[0]!r}")
        status, reason = int(m.group(1)), m.group(2).decode("latin-1")
        headers = []
        for ln in lines[1:]:
            name, sep, value = ln.partition(b":")
            check(sep and name and name.strip() == name,
                  f"bad response header line {ln!r} in {raw_head!r}")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        resp = Resp(status, reason, headers, b"", raw_head)
        if 100 <= status < 200:
            return resp
        check(resp.header("Transfer-Encoding") is None,
              f"unexpected Transfer-Encoding in {raw_head!r}")
        cls = [v for n, v in headers if n.lower() == "content-length"]
        check(len(cls) == 1 and cls[0].isdigit(), f"want one Content-Length in {raw_head!r}")
        n = 0 if head else int(cls[0])
        while len(self.buf) < n:
            self._fill(deadline, f"a {n}-byte response body (status {status})")
        resp.body = bytes(self.buf[:n])
        del self.buf[:n]
        resp.raw = raw_head + resp.body
        return resp

    def expect_closed(self, timeout=None, allow_reset=False, what="the server to close"):
        """Nothing more arrives, then EOF (or a reset if allow_reset)."""
        data, how = read_until_closed(self.sock, timeout or self.timeout)
        extra = bytes(self.buf) + data
        self.buf.clear()
        check(not extra, f"unexpected bytes while waiting for {what}: {extra[:200]!r}")
        ok = ("eof", "reset") if allow_reset else ("eof",)
        check(how in ok, f"waiting for {what}: got {how}, not EOF")

    def expect_open(self, wait):
        """Nothing arrives and the connection stays open for wait seconds."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            data = None
        except ConnectionResetError:
            fail("connection reset; it should have stayed open")
        if data is not None:
            fail("connection should stay open and quiet; got "
                 + ("EOF" if data == b"" else repr(data[:200])))


def exchange(srv, ctx, data, n=1, head=False, closed=False):
    """Send data on a new connection, read n responses; if closed, the
    server must close afterwards.  Returns the responses."""
    with Conn(srv, ctx) as c:
        c.send(data)
        out = [c.read_response(head=head) for _ in range(n)]
        if closed:
            c.expect_closed()
    return out


def get(path, extra=b"", version=b"1.1", method=b"GET"):
    return method + b" " + path + b" HTTP/" + version + b"\r\nHost: t\r\n" + extra + b"\r\n"


def post(path, body, extra=b""):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def chunked(body, sizes):
    """body as chunked framing with chunks of the given sizes (cycled), with
    a chunk extension on the first chunk and a trailer."""
    out, i, k = [], 0, 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        k += 1
        piece = body[i:i + n]
        ext = b";name=\"v\\\"q\"" if i == 0 else b""
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), ext, piece))
        i += n
    out.append(b"0\r\nX-Trailer: t\r\n\r\n")
    return b"".join(out)


def post_chunked(path, body, sizes=(7, 300, 1), extra=b""):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            + extra + b"\r\n" + chunked(body, sizes))


def echo_body(req_headers):
    """What GET /echo answers for these request header lines."""
    return b"".join(n + b": " + v + b"\n" for n, v in req_headers)


def get_echo(headers):
    return (b"GET /echo HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
            + b"\r\n")


def check_resp(r, status, body=None, what=""):
    check(r.status == status, f"{what}: want status {status}, got {r.status} {r.reason} "
          f"(body {r.body[:120]!r})")
    if body is not None:
        check(r.body == body, f"{what}: body mismatch: want {len(body)} bytes "
              f"{body[:80]!r}, got {len(r.body)} bytes {r.body[:80]!r}")


# --------------------------------------------------------------------------
# curl

def curl(ctx, *args, timeout=20, check_rc=True):
    exe = shutil.which("curl")
    if not exe:
        fail("curl not found (apt-get install curl)")
    cmd = [exe, "-sS", "--max-time", str(int(timeout * ctx.factor))] + [str(a) for a in args]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout * ctx.factor + 5)
    except subprocess.TimeoutExpired:
        fail(f"curl did not finish: {' '.join(cmd)}")
    if check_rc and p.returncode != 0:
        fail(f"curl exited {p.returncode}: {' '.join(cmd)}: {p.stderr.decode(errors='replace')[-600:]}")
    return p


def write_file(ctx, name, data):
    path = os.path.join(ctx.tmpdir, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def http_code(p):
    """The last line of curl's stdout, from -w '%{http_code}'."""
    return p.stdout.decode().strip().splitlines()[-1]


# --------------------------------------------------------------------------
# curl: keep-alive, bodies, HEAD, status codes

def test_http_curl_keepalive_reuse(ctx):
    srv = http_server(ctx)
    u = base_url(srv)
    out = [os.path.join(ctx.tmpdir, f"o{i}") for i in range(3)]
    p = curl(ctx, "-v", "-w", "%{http_code} %{num_connects}\\n",
             f"{u}/", "-o", out[0], f"{u}/echo", "-o", out[1], f"{u}/", "-o", out[2])
    lines = p.stdout.decode().split("\n")
    check(lines[:3] == ["200 1", "200 0", "200 0"],
          f"want three 200s over one connection (num_connects 1, 0, 0), got {lines[:3]}")
    err = p.stderr.decode(errors="replace")
    check(err.count("Re-using existing connection") == 2,
          f"curl did not reuse the connection twice: {err[-1500:]}")
    check(read_file(out[0]) == HELLO and read_file(out[2]) == HELLO,
          f"GET / bodies: {read_file(out[0])!r} {read_file(out[2])!r}")
    echoed = read_file(out[1]).decode(errors="replace")
    check(f"Host: 127.0.0.1:{srv.port}\n" in echoed and "User-Agent: curl/" in echoed
          and "Accept: */*\n" in echoed, f"GET /echo did not list the headers: {echoed!r}")
    # A custom header comes back verbatim, in order.
    p = curl(ctx, "-H", "X-One: a b  c", "-H", "X-Two:", "-H", "x-three: 3", f"{u}/echo")
    body = p.stdout.decode(errors="replace")
    check(re.search(r"X-One: a b  c\nx-three: 3\n", body), f"custom headers not echoed: {body!r}")
    # Connection: close and HTTP/1.0 make curl reconnect for the next URL.
    for opt in (["-H", "Connection: close"], ["--http1.0"]):
        p = curl(ctx, *opt, "-w", "%{http_code} %{num_connects}\\n", f"{u}/", "-o", "/dev/null",
                 f"{u}/", "-o", "/dev/null")
        lines = p.stdout.decode().split("\n")
        check(lines[:2] == ["200 1", "200 1"],
              f"with {opt} the server should close after each response, got {lines[:2]}")


def test_http_curl_post_bodies(ctx):
    srv = http_server(ctx)
    u = base_url(srv)
    data = ctx.rng.randbytes(100 * 1024)
    src = write_file(ctx, "body100k", data)
    dst = os.path.join(ctx.tmpdir, "out")
    for what, opts in [("content-length", []),
                       ("chunked", ["-H", "Transfer-Encoding: chunked"])]:
        p = curl(ctx, "--data-binary", f"@{src}", *opts, "-o", dst, "-w", "%{http_code}",
                 f"{u}/echo")
        check(http_code(p) == "200", f"POST ({what}): status {http_code(p)}")
        got = read_file(dst)
        check(got == data, f"POST ({what}) 100 KB body not echoed: got {len(got)} bytes")
    # The largest body allowed, exactly 1 MiB.
    data = ctx.rng.randbytes(MAX_BODY)
    src = write_file(ctx, "body1m", data)
    for what, opts in [("content-length", []),
                       ("chunked", ["-H", "Transfer-Encoding: chunked"])]:
        p = curl(ctx, "--data-binary", f"@{src}", "-H", "Expect:", *opts, "-o", dst,
                 "-w", "%{http_code}", f"{u}/echo")
        check(http_code(p) == "200", f"POST 1 MiB ({what}): status {http_code(p)}")
        check(read_file(dst) == data, f"POST 1 MiB ({what}) not echoed intact")
    # An empty POST.
    p = curl(ctx, "-X", "POST", "-H", "Content-Length: 0", "-o", dst, "-w", "%{http_code}",
             f"{u}/echo")
    check(http_code(p) == "200" and read_file(dst) == b"", f"empty POST: {http_code(p)}")


def test_http_curl_expect_100_continue(ctx):
    srv = http_server(ctx)
    u = base_url(srv)
    data = ctx.rng.randbytes(100 * 1024)
    src = write_file(ctx, "body", data)
    dst = os.path.join(ctx.tmpdir, "out")
    # curl waits --expect100-timeout for the interim response before it sends
    # the body anyway: a server that never sends 100 Continue costs 5 s.
    for what, opts in [("content-length", []),
                       ("chunked", ["-H", "Transfer-Encoding: chunked"])]:
        t0 = time.monotonic()
        p = curl(ctx, "-v", "-H", "Expect: 100-continue", "--expect100-timeout", "5",
                 "--data-binary", f"@{src}", *opts, "-o", dst, "-w", "%{http_code}", f"{u}/echo")
        dt = time.monotonic() - t0
        err = p.stderr.decode(errors="replace")
        check("> Expect: 100-continue" in err, f"curl did not send Expect ({what}): {err[-800:]}")
        check("< HTTP/1.1 100 Continue" in err, f"no 100 Continue ({what}): {err[-800:]}")
        check(http_code(p) == "200", f"Expect ({what}): final status {http_code(p)}")
        check(read_file(dst) == data, f"Expect ({what}): body not echoed intact")
        check(dt < 2.0 * ctx.factor, f"Expect ({what}) took {dt:.2f}s: curl waited for 100 Continue")
    # A body over the limit is refused at once: 413 instead of 100 Continue
    # (curl sends Expect by itself for bodies over 1 MiB), and curl never
    # sends the body.
    big = write_file(ctx, "big", ctx.rng.randbytes(MAX_BODY + 1))
    t0 = time.monotonic()
    p = curl(ctx, "-v", "--expect100-timeout", "5", "--data-binary", f"@{big}", "-o", dst,
             "-w", "%{http_code}", f"{u}/echo")
    dt = time.monotonic() - t0
    err = p.stderr.decode(errors="replace")
    check("> Expect: 100-continue" in err, f"curl did not send Expect for 1 MiB + 1: {err[-800:]}")
    check(http_code(p) == "413", f"1 MiB + 1 with Expect: status {http_code(p)}, want 413")
    check("< HTTP/1.1 100 Continue" not in err, "100 Continue sent for a body that is refused")
    check(dt < 2.0 * ctx.factor, f"413 with Expect took {dt:.2f}s")
    # Raw: 100 Continue comes after the head, then the final response.
    with Conn(srv, ctx) as c:
        body = b"0123456789" * 30
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
               b"Content-Length: 300\r\n\r\n")
        r = c.read_response()
        check_resp(r, 100, what="interim response")
        c.send(body)
        check_resp(c.read_response(), 200, body, "final response after 100 Continue")
        # The body sent together with the head: no interim response needed.
        c.send(post(b"/echo", body, b"Expect: 100-continue\r\n") + get(b"/"))
        r = c.read_response()
        if r.status == 100:
            r = c.read_response()
        check_resp(r, 200, body, "Expect with the body already sent")
        check_resp(c.read_response(), 200, HELLO, "GET after it")


def test_http_curl_head_and_statuses(ctx):
    srv = http_server(ctx)
    u = base_url(srv)
    p = curl(ctx, "-I", f"{u}/")
    head = p.stdout.decode(errors="replace")
    check(head.startswith("HTTP/1.1 200 OK\r\n"), f"HEAD /: {head!r}")
    check(re.search(r"(?im)^Content-Length: 12\r$", head), f"HEAD / Content-Length: {head!r}")
    check(head.endswith("\r\n\r\n"), f"HEAD / response should end after the head: {head!r}")
    p = curl(ctx, "-o", "/dev/null", "-w", "%{http_code}", f"{u}/no/such/route")
    check(http_code(p) == "404", f"unknown route: {http_code(p)}")
    p = curl(ctx, "-X", "DELETE", "-o", "/dev/null", "-w", "%{http_code}", f"{u}/")
    check(http_code(p) == "404", f"DELETE /: {http_code(p)}")
    p = curl(ctx, "-H", "X-Big: " + "a" * 10240, "-o", "/dev/null", "-w", "%{http_code}", f"{u}/")
    check(http_code(p) == "431", f"10 KB header: status {http_code(p)}, want 431")
    big = write_file(ctx, "big", ctx.rng.randbytes(MAX_BODY + 1))
    p = curl(ctx, "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{big}",
             "-o", "/dev/null", "-w", "%{http_code}", f"{u}/echo", check_rc=False)
    check(http_code(p) == "413", f"chunked 1 MiB + 1: status {http_code(p)}, want 413 "
          f"(curl: {p.stderr.decode(errors='replace')[-300:]})")
    p = curl(ctx, "-o", "/dev/null", "-w", "%{http_code}", f"{u}/")
    check(http_code(p) == "200", "server does not answer after the errors")


# --------------------------------------------------------------------------
# Raw sockets: error statuses

def test_http_error_statuses(ctx):
    srv = http_server(ctx)
    cases = [
        # (what, request bytes, status)
        ("malformed request line", b"GARBAGE\r\n\r\n", 400),
        ("no version", b"GET /\r\nHost: t\r\n\r\n", 400),
        ("two spaces", b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("bad version", b"GET / HTTP/1.x\r\nHost: t\r\n\r\n", 400),
        ("lowercase version", b"GET / http/1.1\r\nHost: t\r\n\r\n", 400),
        ("space before colon", b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400),
        ("CR without LF", b"GET / HTTP/1.1\rHost: t\r\n\r\n", 400),
        ("NUL in header", b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400),
        ("no Host in 1.1", b"GET / HTTP/1.1\r\n\r\n", 400),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("bad Content-Length", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n", 400),
        ("conflicting Content-Length",
         b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        ("CL and TE", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        # RFC 9112 6.3: a final coding other than chunked is a 400...
        ("Transfer-Encoding: gzip", b"POST /echo HTTP/1.1\r\nHost: t\r\n"
         b"Transfer-Encoding: gzip\r\n\r\n", 400),
        # ...an unsupported coding before chunked is a 501.
        ("Transfer-Encoding: gzip, chunked", b"POST /echo HTTP/1.1\r\nHost: t\r\n"
         b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n", 501),
        ("Transfer-Encoding: gzip + chunked lines", b"POST /echo HTTP/1.1\r\nHost: t\r\n"
         b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
        ("bad chunk size", b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"zz\r\nabc\r\n0\r\n\r\n", 400),
        ("chunk without CRLF", b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3\r\nabcX\r\n0\r\n\r\n", 400),
        ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505),
        ("HTTP/0.9-style version", b"GET / HTTP/0.9\r\nHost: t\r\n\r\n", 505),
        ("body over 1 MiB", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
         % (MAX_BODY + 1), 413),
        ("chunk over 1 MiB", b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"%x\r\n" % (MAX_BODY + 1), 413),
        ("65 header lines", b"GET / HTTP/1.1\r\nHost: t\r\n"
         + b"".join(b"X-H%d: v\r\n" % i for i in range(64)) + b"\r\n", 431),
    ]
    for what, req, status in cases:
        # A valid request first: the error must not affect what came before.
        with Conn(srv, ctx) as c:
            c.send(get(b"/") + req)
            check_resp(c.read_response(), 200, HELLO, f"{what}: the request before")
            r = c.read_response()
            check_resp(r, status, what=what)
            check(r.header("Connection") == "close", f"{what}: {status} without Connection: close")
            c.expect_closed(what=f"the server to close after {status} ({what})")
    # The header block limit: a head of exactly 8192 bytes is served, one
    # more byte is 431 (whether it comes in one write or two).
    def head_of(n):
        base = b"GET / HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n"
        return base.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (n - len(base)))
    with Conn(srv, ctx) as c:
        c.send(head_of(MAX_HEAD))
        check_resp(c.read_response(), 200, HELLO, "8192-byte head")
        c.send(head_of(MAX_HEAD)[:5000])
        time.sleep(0.02)
        c.send(head_of(MAX_HEAD)[5000:])
        check_resp(c.read_response(), 200, HELLO, "8192-byte head in two writes")
        c.send(head_of(MAX_HEAD + 1))
        r = c.read_response()
        check_resp(r, 431, what="8193-byte head")
        c.expect_closed(what="close after 431")
    with Conn(srv, ctx) as c:
        c.send(head_of(MAX_HEAD + 1)[:6000])
        time.sleep(0.02)
        c.send(head_of(MAX_HEAD + 1)[6000:])
        check_resp(c.read_response(), 431, what="8193-byte head in two writes")
        c.expect_closed(allow_reset=True)
    srv.assert_alive()
    check_resp(exchange(srv, ctx, get(b"/"))[0], 200, HELLO, "after the errors")


# --------------------------------------------------------------------------
# Raw sockets: pipelining, splits, one byte at a time

def _mixed_requests(rng):
    """20 requests of every kind and what each must get back:
    (bytes, status, body or None, is_head)."""
    reqs = []
    for i in range(20):
        k = i % 7
        if k == 0:
            reqs.append((get(b"/"), 200, HELLO, False))
        elif k == 1:
            hs = [(b"Host", b"t"), (b"X-Seq", str(i).encode()), (b"X-Empty", b""),
                  (b"Accept", b"*/*")]
            reqs.append((get_echo(hs), 200, echo_body(hs), False))
        elif k == 2:
            # A body that looks like requests must not be parsed as one.
            body = rng.randbytes(rng.randint(1, 3000)) + get(b"/") + b"\r\n"
            reqs.append((post(b"/echo", body), 200, body, False))
        elif k == 3:
            reqs.append((get(b"/", method=b"HEAD"), 200, b"", True))
        elif k == 4:
            body = rng.randbytes(rng.randint(0, 5000))
            reqs.append((post_chunked(b"/echo", body), 200, body, False))
        elif k == 5:
            reqs.append((get(b"/missing/" + str(i).encode()), 404, None, False))
        elif i % 2:
            reqs.append((get(b"/?q=" + str(i).encode()), 200, HELLO, False))
        else:
            # A GET with a body (skipped), after an empty line (ignored).
            reqs.append((b"\r\n" + get(b"/", b"Content-Length: 5\r\n") + b"GET /", 200,
                         HELLO, False))
    return reqs


def test_http_pipelining(ctx):
    srv = http_server(ctx)
    reqs = _mixed_requests(ctx.rng)
    # All 20 in one write, then again with the connection closed by the last.
    for closing in (False, True):
        data = b"".join(r[0] for r in reqs)
        if closing:
            data += get(b"/", b"Connection: close\r\n") + get(b"/")   # the last is ignored
        with Conn(srv, ctx) as c:
            c.send(data)
            for i, (_, status, body, head) in enumerate(reqs):
                r = c.read_response(head=head)
                check_resp(r, status, body, f"pipelined response {i}")
                if head:
                    check(r.header("Content-Length") == str(len(HELLO)),
                          f"HEAD response {i}: Content-Length {r.header('Content-Length')}")
                check(r.header("Connection") is None,
                      f"response {i} has Connection: {r.header('Connection')}")
            if closing:
                r = c.read_response()
                check_resp(r, 200, HELLO, "Connection: close request")
                check(r.header("Connection") == "close", "no Connection: close on the last response")
                c.expect_closed(what="close after Connection: close (a request after it is ignored)")
            else:
                c.send(get(b"/"))
                check_resp(c.read_response(), 200, HELLO, "request after the pipeline")
    # Many connections pipelining at once, in uneven writes.
    conns = [Conn(srv, ctx) for _ in range(8)]
    try:
        data = b"".join(r[0] for r in reqs)
        for c in conns:
            pos = 0
            while pos < len(data):
                n = ctx.rng.randint(1, 4000)
                c.send(data[pos:pos + n])
                pos += n
        for j, c in enumerate(conns):
            for i, (_, status, body, head) in enumerate(reqs):
                check_resp(c.read_response(head=head), status, body, f"conn {j} response {i}")
    finally:
        for c in conns:
            c.close()


def _split_pairs(rng):
    hs = [(b"Host", b"t"), (b"X-A", b"1"), (b"User-Agent", b"split/1.0")]
    return [
        ("content-length", post(b"/echo", b"hello\r\n\r\nGET / HTTP/1.1\r\n") + get_echo(hs), 2),
        ("chunked", post_chunked(b"/echo", b"abcdefghij" * 3, sizes=(4, 11, 1)) + get(b"/?x"), 2),
        ("head", get(b"/echo", method=b"HEAD") + get(b"/", b"Connection: close\r\n"), 2),
    ]


_DATE = re.compile(rb"\r\nDate: [^\r]*")


def _undated(raw):
    """A response without its Date header: it changes every second."""
    return _DATE.sub(b"", raw)


def test_http_every_split_position(ctx):
    srv = http_server(ctx)
    for what, data, n in _split_pairs(ctx.rng):
        heads = [data.startswith(b"HEAD "), False]
        with Conn(srv, ctx) as c:
            c.send(data)
            baseline = [_undated(c.read_response(head=heads[i]).raw) for i in range(n)]
        for k in range(1, len(data)):
            with Conn(srv, ctx) as c:
                c.send(data[:k])
                time.sleep(0.002)
                c.send(data[k:])
                got = [_undated(c.read_response(head=heads[i]).raw) for i in range(n)]
                if got != baseline:
                    fail(f"{what}: split at byte {k} of {len(data)} ({data[:k][-20:]!r} | "
                         f"{data[k:][:20]!r}): responses differ:\n  want {baseline!r}\n  got  {got!r}")
                if what == "head":
                    c.expect_closed(what=f"close after Connection: close (split at {k})")
    # With Expect: 100-continue the interim response is sent only when the
    # head has arrived without the whole body, at most once; the final
    # responses do not depend on the split.
    body = b"0123456789" * 4
    data = post(b"/echo", body, b"Expect: 100-continue\r\n") + get(b"/")
    head_len = len(data) - len(body) - len(get(b"/"))
    with Conn(srv, ctx) as c:
        c.send(data)
        baseline = [_undated(c.read_response().raw) for _ in range(2)]
    check(not baseline[0].startswith(b"HTTP/1.1 100"), "100 Continue sent with the body present")
    continues = 0
    for k in range(1, len(data)):
        with Conn(srv, ctx) as c:
            c.send(data[:k])
            time.sleep(0.002)
            c.send(data[k:])
            got = [c.read_response() for _ in range(2)]
            interim = [r for r in got if r.status == 100]
            if interim:
                got = got[1:] + [c.read_response()]
            check(len(interim) <= 1 and not any(r.status == 100 for r in got),
                  f"expect: split at {k}: more than one 100 Continue")
            if interim:
                continues += 1
                check(head_len <= k < head_len + len(body),
                      f"expect: split at {k}: 100 Continue though the head was incomplete "
                      f"(head {head_len} bytes) or the body complete")
            if [_undated(r.raw) for r in got] != baseline:
                fail(f"expect: split at byte {k}: responses differ:\n  want {baseline!r}\n"
                     f"  got  {[r.raw for r in got]!r}")
    check(continues > 0, "no split position produced a 100 Continue")
    srv.assert_alive()


test_http_every_split_position.time_limit = 90


def test_http_one_byte_per_packet(ctx):
    srv = http_server(ctx)
    body = b"\x00\x01binary\r\n\xff"
    hs = [(b"Host", b"t"), (b"X-Slow", b"yes")]
    reqs = [(post(b"/echo", body), body, False), (get_echo(hs), echo_body(hs), False),
            (post_chunked(b"/echo", b"chunky data", sizes=(3, 5)), b"chunky data", False),
            (get(b"/", method=b"HEAD"), b"", True), (get(b"/"), HELLO, False)]
    data = b"".join(r[0] for r in reqs)
    with Conn(srv, ctx) as c:
        for b in data:
            c.send(bytes([b]))
            time.sleep(0.001)
        for i, (_, want, head) in enumerate(reqs):
            check_resp(c.read_response(head=head), 200, want, f"byte-by-byte request {i}")
    # Each request answered as soon as its last byte arrives.
    with Conn(srv, ctx) as c:
        req = get(b"/")
        for b in req[:-1]:
            c.send(bytes([b]))
            time.sleep(0.001)
        c.expect_open(0.05)
        c.send(req[-1:])
        check_resp(c.read_response(), 200, HELLO, "after the last byte")


def test_http_large_pipelined_bodies(ctx):
    """Connections pipelining large POSTs (Content-Length and chunked) that
    read nothing until all is sent: bodies are echoed from the receive
    buffers under backpressure, intact and in order."""
    srv = http_server(ctx)
    n_conns, n_reqs = 6, 16
    max_size = int(MAX_BODY * ctx.volume)
    errors = []

    def run(j, reqs, data):
        try:
            with Conn(srv, ctx, timeout=60) as c:
                sender = threading.Thread(target=c.send, args=(data,), daemon=True)
                sender.start()
                time.sleep(0.3)         # let the server block on a full socket
                for i, (_, body) in enumerate(reqs):
                    r = c.read_response()
                    if r.status != 200 or r.body != body:
                        errors.append(f"conn {j} request {i}: status {r.status}, "
                                      f"{len(r.body)} bytes, want {len(body)} "
                                      f"({'same' if r.body == body else 'different'} bytes)")
                        return
                sender.join(10)
        except Exception as e:          # TestFailure included
            errors.append(f"conn {j}: {e}")

    threads = []
    for j in range(n_conns):
        reqs = []
        for i in range(n_reqs):
            body = ctx.rng.randbytes(ctx.rng.choice([0, 1, 16383, 16384, 65537, max_size,
                                                     ctx.rng.randint(0, max_size),
                                                     ctx.rng.randint(max_size // 2, max_size)]))
            if i % 3 == 2:
                sizes = (ctx.rng.randint(1, 70000), ctx.rng.randint(1, 300))
                reqs.append((post_chunked(b"/echo", body, sizes=sizes), body))
            else:
                reqs.append((post(b"/echo", body), body))
        data = b"".join(r[0] for r in reqs)
        threads.append(threading.Thread(target=run, args=(j, reqs, data), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120 * ctx.factor)
    check(not any(t.is_alive() for t in threads), "client threads did not finish")
    check(not errors, "large pipelined bodies:\n  " + "\n  ".join(errors))
    srv.assert_alive()


def test_http_many_keepalive_clients(ctx):
    """200 keep-alive connections, 10 rounds of a request on each."""
    srv = http_server(ctx)
    conns = []
    try:
        for _ in range(200):
            conns.append(Conn(srv, ctx))
        for rnd in range(10):
            for i, c in enumerate(conns):
                if i % 2:
                    c.send(get(b"/"))
                else:
                    c.send(post(b"/echo", b"%d.%d" % (rnd, i)))
            for i, c in enumerate(conns):
                want = HELLO if i % 2 else b"%d.%d" % (rnd, i)
                check_resp(c.read_response(), 200, want, f"round {rnd} conn {i}")
    finally:
        for c in conns:
            c.close()


# --------------------------------------------------------------------------
# Connection close rules

def test_http_connection_close_rules(ctx):
    srv = http_server(ctx)
    # HTTP/1.0 without keep-alive: response, then the server closes.
    r = exchange(srv, ctx, b"GET / HTTP/1.0\r\n\r\n", closed=True)[0]
    check_resp(r, 200, HELLO, "HTTP/1.0")
    check(r.header("Connection") == "close", f"HTTP/1.0 response without Connection: close: {r}")
    r = exchange(srv, ctx, b"GET / HTTP/1.0\r\nHost: t\r\nConnection: close\r\n\r\n",
                 closed=True)[0]
    check_resp(r, 200, HELLO, "HTTP/1.0 Connection: close")
    # HTTP/1.0 with keep-alive: stays open for more requests.
    with Conn(srv, ctx) as c:
        for i in range(3):
            c.send(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            r = c.read_response()
            check_resp(r, 200, HELLO, f"HTTP/1.0 keep-alive request {i}")
            check(r.header("Connection") != "close", "HTTP/1.0 keep-alive answered with close")
        c.expect_open(0.2)
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        check_resp(c.read_response(), 200, HELLO, "HTTP/1.0 last request")
        c.expect_closed()
    # HTTP/1.1 Connection: close (any case, in a list) closes after the response.
    for value in (b"close", b"Close", b"keep-alive, close", b"foo,  CLOSE "):
        r = exchange(srv, ctx, get(b"/", b"Connection: " + value + b"\r\n"), closed=True)[0]
        check_resp(r, 200, HELLO, f"Connection: {value!r}")
        check(r.header("Connection") == "close", f"Connection: {value!r} not answered with close")
    r = exchange(srv, ctx, post(b"/echo", b"xyz", b"Connection: close\r\n"), closed=True)[0]
    check_resp(r, 200, b"xyz", "POST with Connection: close")
    r = exchange(srv, ctx, get(b"/", b"Connection: close\r\n", method=b"HEAD"), head=True,
                 closed=True)[0]
    check_resp(r, 200, b"", "HEAD with Connection: close")
    # HTTP/1.1 default: keep-alive.
    with Conn(srv, ctx) as c:
        c.send(get(b"/"))
        check_resp(c.read_response(), 200, HELLO, "keep-alive")
        c.expect_open(0.2)
        c.send(get(b"/"))
        check_resp(c.read_response(), 200, HELLO, "keep-alive second request")


# --------------------------------------------------------------------------
# Timeouts (tests/fixtures/http/timeouts.lua): the timeout under test is
# 300 ms, the other one 3 s so that it does not interfere.

def timeouts_server(ctx, idle_ms, header_ms):
    return http_server(ctx, script=TIMEOUTS_LUA,
                       env={"RL_TEST_IDLE_MS": str(idle_ms), "RL_TEST_HEADER_MS": str(header_ms)})


def _wait_close(c, ctx, what):
    t0 = time.monotonic()
    c.expect_closed(timeout=5 * ctx.factor, what=what)
    return time.monotonic() - t0


def test_http_idle_timeout(ctx):
    srv = timeouts_server(ctx, 300, 3000)
    late = 1.5 * ctx.factor
    # Idle after a response: closed after ~300 ms, without a response.
    with Conn(srv, ctx) as c:
        c.send(get(b"/"))
        check_resp(c.read_response(), 200, b"hi\n", "request")
        dt = _wait_close(c, ctx, "the idle timeout")
        check(0.2 <= dt <= late, f"idle connection closed after {dt:.2f}s, want ~{FIXTURE_TIMEOUT}s")
    # A connection that never sends anything.
    with Conn(srv, ctx) as c:
        dt = _wait_close(c, ctx, "the idle timeout of a silent connection")
        check(0.2 <= dt <= late, f"silent connection closed after {dt:.2f}s")
    # Requests keep a connection alive past the timeout.
    with Conn(srv, ctx) as c:
        for i in range(8):
            c.send(get(b"/"))
            check_resp(c.read_response(), 200, b"hi\n", f"keep-alive request {i}")
            time.sleep(FIXTURE_TIMEOUT / 3)
    srv.assert_alive()


def test_http_idle_timeout_not_while_sending(ctx):
    """A connection is idle from the end of the last response, not from the
    last received byte: a slow reader of a 16 MiB response keeps its
    keep-alive connection, for the whole idle timeout after the response."""
    idle = 1.0
    srv = timeouts_server(ctx, int(idle * 1000), 5000)
    size = 16 << 20
    with Conn(srv, ctx, timeout=30, rcvbuf=65536) as c:
        t0 = time.monotonic()
        c.send(get(b"/big"))
        # Slowly for almost two timeouts: the server has megabytes left to
        # send all along.  (The end of the slow phase is placed just before
        # t0 + 2 * idle, so that a server checking idleness every `idle`
        # from the connection's start sees the send finish just before a
        # check: the worst case for a check that only looks at whether
        # something is still unsent.)
        while time.monotonic() - t0 < 2 * idle - 0.15:
            time.sleep(0.01)
            c.sock.settimeout(5)
            chunk = c.sock.recv(32768)
            check(chunk, f"EOF after {len(c.buf)} bytes of the 16 MiB response")
            c.buf += chunk
        check(len(c.buf) < size // 2, f"the reader was not slow: {len(c.buf)} bytes in "
              f"{time.monotonic() - t0:.2f}s")
        # The rest at full speed.
        r = c.read_response(timeout=30 * ctx.factor)
        done = time.monotonic()
        check(r.status == 200 and len(r.body) == size, f"/big: {r.status}, {len(r.body)} bytes")
        check(r.header("Connection") is None, f"/big answered with Connection: {r.header('Connection')}")
        # Idle for half the timeout since the response ended: still open.
        time.sleep(idle / 2)
        c.send(get(b"/"))
        try:
            r = c.read_response()
        except AssertionError as e:
            fail(f"keep-alive connection closed {time.monotonic() - done:.2f}s after the end of a "
                 f"response that took {done - t0:.2f}s to send (idle timeout {idle:.1f}s): {e}")
        check_resp(r, 200, b"hi\n", "request after the slow response")


def test_http_request_timeout(ctx):
    srv = timeouts_server(ctx, 3000, 300)
    late = 1.5 * ctx.factor
    partials = [
        ("request line", b"GET / HTT"),
        ("head", b"GET / HTTP/1.1\r\nHost: t\r\n"),
        ("Content-Length body", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc"),
        ("chunked body", b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),
    ]
    for what, data in partials:
        with Conn(srv, ctx) as c:
            c.send(get(b"/") + data)
            t0 = time.monotonic()
            check_resp(c.read_response(), 200, b"hi\n", f"{what}: complete request before")
            r = c.read_response(timeout=5 * ctx.factor)
            dt = time.monotonic() - t0
            check_resp(r, 408, what=f"incomplete {what}")
            check(r.header("Connection") == "close", f"408 without Connection: close ({what})")
            check(0.2 <= dt <= late, f"408 after {dt:.2f}s for an incomplete {what}, "
                  f"want ~{FIXTURE_TIMEOUT}s")
            c.expect_closed(what=f"close after 408 ({what})")
    # Slowloris: a byte every 50 ms does not extend the deadline.
    with Conn(srv, ctx) as c:
        t0 = time.monotonic()
        data = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"s" * 100
        got408 = None
        for i, b in enumerate(data):
            try:
                c.send(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                break
            c.sock.settimeout(0.05)
            try:
                chunk = c.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
            c.buf += chunk
            if not chunk or b"\r\n\r\n" in c.buf:
                got408 = time.monotonic() - t0
                break
        check(got408 is not None, f"a trickled request was never timed out "
              f"({time.monotonic() - t0:.2f}s); got {bytes(c.buf)!r}")
        check(got408 <= late, f"slowloris request timed out after {got408:.2f}s")
        r = c.read_response()
        check_resp(r, 408, what="trickled request")


def test_http_request_timeout_is_per_request(ctx):
    """The request deadline runs from the first byte of *each* incomplete
    request: a keep-alive connection whose reads keep ending inside the next
    request (each request complete well within the timeout) must not get a
    408."""
    srv = timeouts_server(ctx, 3000, 300)
    req = get(b"/")
    step = FIXTURE_TIMEOUT / 3
    with Conn(srv, ctx) as c:
        c.send(req + req[:10])
        check_resp(c.read_response(), 200, b"hi\n", "first request")
        for i in range(8):
            time.sleep(step)
            # Completes the pending request (incomplete for ~100 ms) and
            # starts another one.
            c.send(req[10:] + req[:10])
            r = c.read_response()
            check(r.status == 200, f"request {i + 2} (each incomplete for only ~{step * 1000:.0f} ms, "
                  f"timeout {FIXTURE_TIMEOUT * 1000:.0f} ms) got {r.status} {r.reason} at "
                  f"{(i + 1) * step:.2f}s: the request timer is not restarted when a request "
                  f"completes and the next one is already partly received")


# --------------------------------------------------------------------------
# Static files

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def _static_root(ctx):
    top = os.path.join(ctx.tmpdir, "static")
    root = os.path.join(top, "root")
    os.makedirs(os.path.join(root, "sub", "deeper"))
    secret = b"TOP-SECRET-" + ctx.rng.randbytes(8).hex().encode() + b"\n"
    with open(os.path.join(top, "secret"), "wb") as f:
        f.write(secret)
    files = {
        "index.html": (b"<!doctype html><title>t</title><p>hi</p>\n", "text/html; charset=utf-8"),
        "style.css": (b"body { color: red }\n", "text/css"),
        "img.png": (PNG + ctx.rng.randbytes(5000), "image/png"),
        "LOGO.PNG": (PNG + ctx.rng.randbytes(100), "image/png"),
        "app.js": (b"console.log(1)\n", "text/javascript"),
        "data.json": (b'{"a": 1}\n', "application/json"),
        "blob.xyz": (ctx.rng.randbytes(3000), "application/octet-stream"),
        "noext": (b"no extension\n", "application/octet-stream"),
        "big.bin": (ctx.rng.randbytes(300 * 1024), "application/octet-stream"),
        "empty.txt": (b"", "text/plain; charset=utf-8"),
        "a b.txt": (b"space\n", "text/plain; charset=utf-8"),
        "sub/page.txt": (b"sub page\n", "text/plain; charset=utf-8"),
        "sub/deeper/x.css": (b"x{}\n", "text/css"),
    }
    for name, (data, _) in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    # Symlinks: inside the root (allowed) and escaping it (refused).
    os.symlink("style.css", os.path.join(root, "link_in.css"))
    os.symlink("../secret", os.path.join(root, "link_out"))
    os.symlink(os.path.join(top, "secret"), os.path.join(root, "link_abs"))
    os.symlink(top, os.path.join(root, "link_dir"))
    os.symlink("../../secret", os.path.join(root, "sub", "up"))
    return root, files, secret


def test_http_static_files(ctx):
    root, files, secret = _static_root(ctx)
    srv = http_server(ctx, root=root)
    with Conn(srv, ctx) as c:
        for name, (data, ctype) in files.items():
            path = b"/static/" + name.replace(" ", "%20").encode()
            c.send(get(path))
            r = c.read_response()
            check_resp(r, 200, data, f"GET {path!r}")
            check(r.header("Content-Type") == ctype,
                  f"GET {path!r}: Content-Type {r.header('Content-Type')!r}, want {ctype!r}")
            c.send(get(path, method=b"HEAD"))
            r = c.read_response(head=True)
            check_resp(r, 200, b"", f"HEAD {path!r}")
            check(r.header("Content-Length") == str(len(data)),
                  f"HEAD {path!r}: Content-Length {r.header('Content-Length')}, want {len(data)}")
        for path, data in [(b"/static/link_in.css", files["style.css"][0]),
                           (b"/static/index.html?v=1#x", files["index.html"][0]),
                           (b"/static/%69ndex.html", files["index.html"][0]),
                           (b"/static/sub/deeper/x.css", files["sub/deeper/x.css"][0])]:
            c.send(get(path))
            check_resp(c.read_response(), 200, data, f"GET {path!r}")
        for path in (b"/static/nope.html", b"/static/index.html/", b"/static/sub/nope"):
            c.send(get(path))
            check_resp(c.read_response(), 404, what=f"GET {path!r}")
        # Directories are not listed.
        for path in (b"/static/", b"/static/sub", b"/static/sub/"):
            c.send(get(path))
            check_resp(c.read_response(), 403, what=f"GET {path!r}")
    # Through curl too: bytes and type of a binary file.
    dst = os.path.join(ctx.tmpdir, "img")
    p = curl(ctx, "-o", dst, "-w", "%{http_code} %{content_type}", f"{base_url(srv)}/static/img.png")
    check(p.stdout.decode() == "200 image/png", f"curl img.png: {p.stdout!r}")
    check(read_file(dst) == files["img.png"][0], "curl img.png: bytes differ")


TRAVERSALS = [
    b"/static/../secret",
    b"/static/./../secret",
    b"/static/%2e%2e/secret",
    b"/static/%2E%2E/secret",
    b"/static/.%2e/secret",
    b"/static/..%2fsecret",
    b"/static/..%2Fsecret",
    b"/static/%2e%2e%2fsecret",
    b"/static/sub/../../secret",
    b"/static/sub/%2e%2e/%2e%2e/secret",
    b"/static/sub%2f..%2f..%2fsecret",
    b"/static/..\\secret",
    b"/static/..%5csecret",
    b"/static/sub\\..\\..\\secret",
    b"/static/%00x",
    b"/static/index.html%00.png",
    b"/static/..%00/secret",
    b"/static/%25%32%65%25%32%65/secret",      # double-encoded: a literal name
    b"/static/%zz",
    b"/static/%",
    b"/static/link_out",
    b"/static/link_abs",
    b"/static/link_dir/secret",
    b"/static/sub/up",
    b"/static//etc/passwd",
    b"/static/%2fetc%2fpasswd",
    b"/static/%2Fetc/passwd",
    b"/static///etc/passwd",
    b"/static/../../../../../../etc/passwd",
    b"/static/..",
    b"/static/.",
    b"/static/sub/..",
]


def test_http_static_traversal_refused(ctx):
    root, files, secret = _static_root(ctx)
    srv = http_server(ctx, root=root)
    with open("/etc/passwd", "rb") as f:
        passwd = f.read()
    leaks = []
    with Conn(srv, ctx) as c:
        for path in TRAVERSALS:
            for method in (b"GET", b"HEAD"):
                c.send(get(path, method=method))
                r = c.read_response(head=method == b"HEAD")
                if secret.strip() in r.body or (passwd and r.body == passwd) or \
                        b"root:" in r.body:
                    leaks.append(f"{method.decode()} {path!r}: LEAKED {r.body[:60]!r}")
                elif r.status != 404:
                    leaks.append(f"{method.decode()} {path!r}: status {r.status}, want 404")
    check(not leaks, "traversal attempts not refused:\n  " + "\n  ".join(leaks))
    # The same through curl, which must not normalise the path.
    for path in (b"/static/../secret", b"/static/sub/../../secret", b"/static//etc/passwd"):
        p = curl(ctx, "--path-as-is", "-w", "\\n%{http_code}", base_url(srv) + path.decode())
        out = p.stdout
        check(secret.strip() not in out and b"root:" not in out, f"curl {path!r} leaked: {out!r}")
        check(out.endswith(b"\n404"), f"curl --path-as-is {path!r}: {out[-80:]!r}, want 404")
    srv.assert_alive()
    # Files are still served after the attempts.
    check_resp(exchange(srv, ctx, get(b"/static/style.css"))[0], 200, files["style.css"][0],
               "style.css after the traversal attempts")
