"""scripts/http_proxy.lua in front of two test upstreams (http_upstream.py):
round robin and keep-alive reuse, the fields it adds and removes, chunked
bodies both ways, 10 MiB bodies both ways with bounded memory, an upstream
killed (next upstream, then 502), a slow upstream (504), pipelining, routes;
and curl through it."""

import os
import signal
import socket
import subprocess
import time

from harness import REPO, EnvCtx, Server, check, connect, ring_kb, rss_kb
from http_upstream import Upstream, pattern

PROXY_LUA = os.path.join(REPO, "scripts", "http_proxy.lua")


def start_proxy(ctx, upstreams=None, env=None, routes=None):
    e = {}
    if upstreams:
        e["RINGLINE_HTTP_PROXY_UPSTREAMS"] = ",".join(u.addr for u in upstreams)
    if routes:
        path = os.path.join(ctx.tmpdir, "routes")
        with open(path, "w") as f:
            f.write(routes)
        e["RINGLINE_HTTP_PROXY_ROUTES"] = path
    e.update(env or {})
    srv = Server(EnvCtx(ctx, e), script=PROXY_LUA, args=["--workers", "1"])
    ctx.servers.append(srv)
    srv.start()
    return srv


def _recv_until(sock, buf, marker, timeout):
    deadline = time.monotonic() + timeout
    while marker not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        d = sock.recv(65536)
        if not d:
            raise EOFError(f"closed before {marker!r}; have {bytes(buf[:200])!r}")
        buf += d
    return buf.index(marker)


def _recv_n(sock, buf, n, timeout):
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        d = sock.recv(1 << 20)
        if not d:
            raise EOFError(f"closed with {len(buf)} of {n} bytes")
        buf += d


def read_response(sock, buf=None, timeout=10.0, head_request=False):
    """(status, headers lowercase -> value, body, raw_head); reads one
    response from sock, keeping what follows in buf (a bytearray)."""
    if buf is None:
        buf = bytearray()
    end = _recv_until(sock, buf, b"\r\n\r\n", timeout)
    head = bytes(buf[:end]).decode("latin-1")
    del buf[:end + 4]
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        hdrs[k] = (hdrs[k] + ", " + v.strip()) if k in hdrs else v.strip()
    body = bytearray()
    if head_request or status in (204, 304) or status < 200:
        pass
    elif hdrs.get("transfer-encoding", "").lower() == "chunked":
        while True:
            e = _recv_until(sock, buf, b"\r\n", timeout)
            size = int(bytes(buf[:e]).split(b";")[0], 16)
            del buf[:e + 2]
            if size == 0:
                _recv_until(sock, buf, b"\r\n", timeout)
                del buf[:2]
                break
            _recv_n(sock, buf, size + 2, timeout)
            body += buf[:size]
            del buf[:size + 2]
    elif "content-length" in hdrs:
        n = int(hdrs["content-length"])
        _recv_n(sock, buf, n, timeout)
        body += buf[:n]
        del buf[:n]
    else:
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            d = sock.recv(65536)
            if not d:
                break
            buf += d
        body += buf
        del buf[:]
    return status, hdrs, bytes(body), head


def request(sock, path, method="GET", headers="", body=b"", host="test"):
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}".encode() +
                 (f"Content-Length: {len(body)}\r\n" if body else "").encode() + b"\r\n" + body)


def test_http_proxy_round_robin_keepalive_and_fields(ctx):
    """Requests alternate between two upstreams over keep-alive connections
    (40 requests on one client connection: at most a few upstream
    connections); X-Forwarded-For/-Proto and Via are added, hop-by-hop
    fields (and those Connection names) removed both ways."""
    a, b = Upstream("a"), Upstream("b")
    srv = start_proxy(ctx, [a, b])
    s = connect(srv.addr)
    buf = bytearray()
    names = []
    for _ in range(40):
        request(s, "/hello")
        st, h, body, _ = read_response(s, buf)
        check(st == 200, f"status {st}")
        names.append(body.decode())
        check("x-hop" not in h and "keep-alive" not in h, f"hop-by-hop fields passed back: {h}")
        check(h.get("via") == "1.1 ringline", f"Via: {h.get('via')}")
    check(names.count("hello from a") == 20 and names.count("hello from b") == 20,
          f"round robin: {names[:6]}")
    check(a.connections <= 2 and b.connections <= 2,
          f"upstream connections: a {a.connections}, b {b.connections} for 40 requests")
    request(s, "/headers", headers="Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
            "Keep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
            "Via: 1.0 other\r\nX-Kept: yes\r\n")
    st, h, body, _ = read_response(s, buf)
    seen = body.decode().lower()
    check(st == 200, f"status {st}")
    for gone in ("x-secret", "keep-alive", "te:", "connection"):
        check(gone not in seen, f"{gone} reached the upstream: {seen!r}")
    check("x-forwarded-for: 10.0.0.1, 127.0.0.1" in seen, f"X-Forwarded-For: {seen!r}")
    check("x-forwarded-proto: http\r\n" in seen, f"X-Forwarded-Proto: {seen!r}")
    check("via: 1.0 other, 1.1 ringline" in seen, f"Via: {seen!r}")
    check("x-kept: yes" in seen and "host: test" in seen, f"end-to-end fields: {seen!r}")
    s.close()


def test_http_proxy_curl(ctx):
    """curl: GET, POST, HEAD, a chunked upload (-T -), Expect: 100-continue
    answered by the proxy, and an HTTP/1.0 client given a chunked response
    without chunking."""
    a = Upstream("a")
    srv = start_proxy(ctx, [a])
    url = f"http://127.0.0.1:{srv.port}"

    def curl(*args, data=None):
        r = subprocess.run(["curl", "-sS", "--max-time", "10", *args], input=data,
                           capture_output=True, timeout=20)
        check(r.returncode == 0, f"curl {args}: {r.stderr.decode()}")
        return r.stdout

    check(curl(url + "/hello") == b"hello from a", "GET")
    check(curl("--data-binary", "@-", url + "/echo", data=b"posted") == b"posted", "POST")
    check(b"200 OK" in curl("-I", url + "/hello"), "HEAD")
    big = pattern(300000)
    check(curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@-", url + "/echo",
               data=big) == big, "chunked upload echoed chunked")
    check(curl("-H", "Expect: 100-continue", "--data-binary", "@-", url + "/echo",
               data=b"y" * 2048) == b"y" * 2048, "Expect: 100-continue")
    out = curl("-0", "-i", url + "/chunked")
    check(b"Transfer-Encoding" not in out and b"chunk 4\n" in out,
          f"HTTP/1.0 client got chunked framing: {out[:200]!r}")
    check(curl(url + "/close") == b"bye", "a body that ends at the close")


def test_http_proxy_chunked_and_pipelined(ctx):
    """A chunked request body is relayed and the chunked response comes back
    decoded the same; three pipelined requests in one write are answered in
    order."""
    a = Upstream("a")
    srv = start_proxy(ctx, [a])
    s = connect(srv.addr)
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"abc", b"d" * 5000, b"e")) + b"0\r\n\r\n"
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    buf = bytearray()
    st, h, got, _ = read_response(s, buf)
    check(st == 200 and got == b"abc" + b"d" * 5000 + b"e", f"chunked echo: {st} {len(got)}")
    check(h.get("transfer-encoding") == "chunked", f"response framing: {h}")
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /chunked HTTP/1.1\r\nHost: t\r\n\r\n"
              b"GET /big?n=70000 HTTP/1.1\r\nHost: t\r\n\r\n")
    r1 = read_response(s, buf)
    r2 = read_response(s, buf)
    r3 = read_response(s, buf)
    check(r1[2] == b"hello from a", f"first: {r1[2][:40]!r}")
    check(r2[2] == b"".join(f"chunk {k}\n".encode() for k in range(5)), f"second: {r2[2][:40]!r}")
    check(r3[2] == pattern(70000), "third")
    s.close()


def test_http_proxy_10mib_bodies_bounded_memory(ctx):
    """A 10 MiB upload and a 10 MiB download read slowly stream through the
    proxy: its resident memory beyond the receive ring (bounded, shared by
    all connections) grows by much less than the bodies."""
    a = Upstream("a")
    srv = start_proxy(ctx, [a])
    s = connect(srv.addr)
    time.sleep(0.2)
    def beyond_ring():
        return rss_kb(srv.pid) - ring_kb(srv.pid)
    rss0 = beyond_ring()
    n = 10 * 1048576
    big = pattern(n)
    request(s, "/echo", method="POST", body=big)
    buf = bytearray()
    st, _, got, _ = read_response(s, buf, timeout=60)
    check(st == 200 and got == big, f"10 MiB echo: {st}, {len(got)} bytes")
    rss1 = beyond_ring()
    # Download, read slowly: the proxy stops reading the upstream meanwhile.
    s2 = connect(srv.addr, rcvbuf=65536)
    request(s2, f"/big?n={n}")
    peak = rss1
    got = bytearray()
    s2.settimeout(10)
    while len(got) < n + 30:
        d = s2.recv(262144)
        if not d:
            break
        got += d
        if len(got) < 3 * 1048576:
            time.sleep(0.01)
        peak = max(peak, beyond_ring())
    check(got.endswith(pattern(n)[-1000:]) and len(got) > n, f"download: {len(got)} bytes")
    growth = peak - rss0
    print(f"    [{ctx.name}] proxy RSS beyond the ring {rss0} KiB -> {rss1} KiB after the upload, "
          f"peak {peak} KiB during the download")
    # ASan keeps freed memory in quarantine: a looser bound there.
    limit = (8 if ctx.asan else 3) * 1024
    check(growth < limit, f"proxy memory beyond the ring grew {growth} KiB for 10 MiB bodies")
    s.close()
    s2.close()


def test_http_proxy_upstream_killed_and_502(ctx):
    """An upstream killed: requests go to the one left (it is taken out of
    rotation); both killed: 502, and the proxy goes on."""
    a, b = Upstream("a"), Upstream("b")
    srv = start_proxy(ctx, [a, b])
    s = connect(srv.addr)
    buf = bytearray()
    for _ in range(4):
        request(s, "/hello")
        check(read_response(s, buf)[0] == 200, "before")
    a.stop()
    for k in range(10):
        request(s, "/hello")
        st, _, body, _ = read_response(s, buf)
        check(st == 200 and body == b"hello from b", f"request {k} after a stopped: {st} {body!r}")
    b.stop()
    request(s, "/hello")
    st, h, body, _ = read_response(s, buf)
    check(st == 502, f"no upstream: {st} {body!r}")
    s2 = connect(srv.addr)
    request(s2, "/hello")
    check(read_response(s2)[0] == 502, "a new client also gets 502")
    c = Upstream("c")
    srv2 = start_proxy(ctx, [c])
    s3 = connect(srv2.addr)
    request(s3, "/hello")
    check(read_response(s3)[2] == b"hello from c", "a second proxy")
    srv.assert_alive()


def test_http_proxy_slow_upstream_504_and_mid_body(ctx):
    """No response head within the read timeout: 504; an upstream that dies
    in the middle of a body: the client's connection is closed (never a
    short body taken as whole)."""
    a = Upstream("a")
    srv = start_proxy(ctx, [a], env={"RINGLINE_HTTP_PROXY_READ_TIMEOUT": "300"})
    s = connect(srv.addr)
    t0 = time.monotonic()
    request(s, "/slow?ms=2000")
    st, _, _, _ = read_response(s, timeout=5)
    took = time.monotonic() - t0
    check(st == 504 and took < 1.5, f"slow upstream: {st} after {took:.2f} s")
    # A killed upstream mid-body: a raw upstream that sends half.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    port = lst.getsockname()[1]
    srv2 = start_proxy(ctx, env={"RINGLINE_HTTP_PROXY_UPSTREAMS": f"127.0.0.1:{port}"})
    c = connect(srv2.addr)
    request(c, "/x")
    u, _ = lst.accept()
    u.recv(4096)
    u.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"z" * 400)
    time.sleep(0.1)
    u.close()
    got = bytearray()
    c.settimeout(5)
    while True:
        d = c.recv(4096)
        if not d:
            break
        got += d
    check(got.endswith(b"z" * 400) and b"Content-Length: 1000" in got,
          f"half a body then the close: {bytes(got[:80])!r}")
    lst.close()


def test_http_proxy_sigterm_drains_requests_in_flight(ctx):
    """SIGTERM while a request waits on a slow upstream: the request is
    answered (Connection: close), an idle keep-alive client is closed at
    once, and the proxy exits when the last task is done."""
    a = Upstream("a")
    srv = start_proxy(ctx, [a])
    idle = connect(srv.addr)
    request(idle, "/hello")
    check(read_response(idle)[0] == 200, "idle client's first request")
    busy = connect(srv.addr)
    request(busy, "/slow?ms=1000")
    time.sleep(0.3)
    t0 = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    idle.settimeout(3)
    check(idle.recv(100) == b"", "the idle keep-alive client is closed")
    took_idle = time.monotonic() - t0
    st, h, body, _ = read_response(busy, timeout=5)
    check(st == 200 and body == b"slow", f"in flight at SIGTERM: {st} {body!r}")
    check(h.get("connection") == "close", f"answered with Connection: close: {h}")
    rc = srv.wait(5)
    took = time.monotonic() - t0
    check(rc == 0, f"exit status {rc}")
    check(took_idle < 0.5 and took < 3, f"idle closed after {took_idle:.2f} s, exit after {took:.2f} s")
    srv.checked = True


def test_http_proxy_routes_file(ctx):
    """Routes by host and longest path prefix, "*" for the rest."""
    a, b, c = Upstream("a"), Upstream("b"), Upstream("c")
    routes = (f"# host prefix upstreams\n* / {a.addr}\n* /api/ {b.addr}\n"
              f"shop.test / {c.addr}\nshop.test /api/ {b.addr}\n")
    srv = start_proxy(ctx, routes=routes)
    s = connect(srv.addr)
    buf = bytearray()
    cases = [("/hello", "x.test", b"hello from a"), ("/api/../hello", "x.test", None),
             ("/hello", "shop.test", b"hello from c"), ("/hello", "SHOP.test:8080", b"hello from c")]
    for path, host, want in cases:
        request(s, path, host=host)
        st, _, body, _ = read_response(s, buf)
        if want is not None:
            check(body == want, f"{host}{path}: {body!r}")
    for host in ("x.test", "shop.test"):
        before = b.requests
        request(s, "/api/hello", host=host)
        read_response(s, buf)
        check(b.requests == before + 1 and b.heads[-1].startswith(b"GET /api/hello "),
              f"{host} /api/ went to b: {b.heads[-1:]!r}")
    s.close()


def test_http_proxy_bad_requests(ctx):
    """Malformed requests get their 4xx and the connection closes; the
    proxy goes on."""
    a = Upstream("a")
    srv = start_proxy(ctx, [a])
    for raw, want in ((b"GET / HTTP/1.1\r\n\r\n", 400), (b"BAD\r\n\r\n", 400),
                      (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
                      (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505)):
        s = connect(srv.addr)
        s.sendall(raw)
        st = read_response(s)[0]
        check(st == want, f"{raw[:30]!r}: {st}, expected {want}")
        s.close()
    s = connect(srv.addr)
    request(s, "/hello")
    check(read_response(s)[0] == 200, "after bad requests")
