"""Static files (lua/ringline/http/static.lua via scripts/http.lua): bytes
streamed from disk with conn:send_file, HEAD, ranges, conditional requests,
405/403/404 rules, pipelining, curl resume."""

import hashlib
import os
import shutil

from harness import check, rss_kb
from test_http import Conn, base_url, check_resp, curl, get, http_server, read_file


def _read_304(c):
    """A 304 head (no Content-Length, no body): (status line, header text)."""
    import time
    deadline = time.monotonic() + c.timeout
    while b"\r\n\r\n" not in c.buf:
        c._fill(deadline, "a 304 head")
    i = c.buf.find(b"\r\n\r\n")
    head = bytes(c.buf[:i])
    del c.buf[:i + 4]
    return head


def _root(ctx):
    top = os.path.join(ctx.tmpdir, "st")
    root = os.path.join(top, "root")
    os.makedirs(os.path.join(root, "dir"))
    with open(os.path.join(top, "secret"), "wb") as f:
        f.write(b"SECRET\n")
    files = {"small.txt": b"hello static\n", "zero.bin": b"",
             "one.bin": ctx.rng.randbytes(1 << 20),
             "twenty.bin": ctx.rng.randbytes(20 << 20)}
    for n, d in files.items():
        with open(os.path.join(root, n), "wb") as f:
            f.write(d)
    os.mkfifo(os.path.join(root, "fifo"))
    os.symlink("small.txt", os.path.join(root, "in.txt"))
    os.symlink("../secret", os.path.join(root, "out"))
    return root, files


def test_static_get_head_bytes(ctx):
    root, files = _root(ctx)
    srv = http_server(ctx, root=root)
    with Conn(srv, ctx, timeout=20) as c:
        for n, d in files.items():
            c.send(get(b"/static/" + n.encode()))
            r = c.read_response()
            check_resp(r, 200, what=n)
            check(hashlib.sha256(r.body).digest() == hashlib.sha256(d).digest(), f"{n}: bytes differ")
            check(r.header("Accept-Ranges") == "bytes" and r.header("ETag") and
                  r.header("Last-Modified"), f"{n}: validators missing {r.headers}")
            c.send(get(b"/static/" + n.encode(), method=b"HEAD"))
            r = c.read_response(head=True)
            check(r.status == 200 and r.header("Content-Length") == str(len(d)), f"HEAD {n}: {r}")
        # Pipelined, answered in order.
        names = ["one.bin", "small.txt", "zero.bin", "twenty.bin", "small.txt"]
        c.send(b"".join(get(b"/static/" + n.encode()) for n in names))
        for n in names:
            check_resp(c.read_response(), 200, files[n], f"pipelined {n}")


def test_static_ranges_conditional(ctx):
    root, files = _root(ctx)
    srv = http_server(ctx, root=root)
    d = files["one.bin"]
    with Conn(srv, ctx) as c:
        for spec, a, b in [(b"0-9", 0, 9), (b"100-", 100, len(d) - 1), (b"-5", len(d) - 5, len(d) - 1)]:
            c.send(get(b"/static/one.bin", b"Range: bytes=" + spec + b"\r\n"))
            r = c.read_response()
            check_resp(r, 206, d[a:b + 1], f"range {spec!r}")
            check(r.header("Content-Range") == f"bytes {a}-{b}/{len(d)}", f"{spec!r}: {r.headers}")
        c.send(get(b"/static/one.bin", b"Range: bytes=%d-\r\n" % len(d)))
        r = c.read_response()
        check(r.status == 416 and r.header("Content-Range") == f"bytes */{len(d)}", f"416: {r}")
        c.send(get(b"/static/one.bin", b"Range: bytes=zz\r\n"))
        check_resp(c.read_response(), 200, d, "malformed range")
        c.send(get(b"/static/one.bin"))
        r = c.read_response()
        etag, lm = r.header("ETag").encode(), r.header("Last-Modified").encode()
        c.send(get(b"/static/one.bin", b"Range: bytes=0-1\r\nIf-Range: " + etag + b"\r\n"))
        check_resp(c.read_response(), 206, d[:2], "If-Range match")
        c.send(get(b"/static/one.bin", b'Range: bytes=0-1\r\nIf-Range: "nope"\r\n'))
        check_resp(c.read_response(), 200, d, "If-Range mismatch")
        for h in (b"If-None-Match: " + etag, b'If-None-Match: "x", W/' + etag, b"If-Modified-Since: " + lm):
            c.send(get(b"/static/one.bin", h + b"\r\n"))
            head = _read_304(c)
            check(head.startswith(b"HTTP/1.1 304 ") and b"\r\nETag: " + etag in head
                  and b"Content-Length" not in head, f"{h!r}: {head!r}")
        c.send(get(b"/static/one.bin", b'If-None-Match: "x"\r\n'))
        check_resp(c.read_response(), 200, d, "If-None-Match mismatch")
        c.send(get(b"/static/one.bin", b"If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"))
        check_resp(c.read_response(), 200, d, "modified since")


def test_static_statuses(ctx):
    root, files = _root(ctx)
    srv = http_server(ctx, root=root)
    with Conn(srv, ctx) as c:
        c.send(b"DELETE /static/small.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        r = c.read_response()
        check(r.status == 405 and r.header("Allow") == "GET, HEAD", f"405: {r}")
        for p, st in [(b"/static/dir", 403), (b"/static/fifo", 403), (b"/static/nope", 404),
                      (b"/static/../secret", 404), (b"/static/%2e%2e/secret", 404),
                      (b"/static//etc/passwd", 404), (b"/static/out", 404),
                      (b"/static/in.txt", 200)]:
            c.send(get(p))
            r = c.read_response()
            check(r.status == st and b"SECRET" not in r.body and root.encode() not in r.body,
                  f"{p!r}: want {st}, got {r}")


def test_static_curl_resume(ctx):
    if not shutil.which("curl"):
        ctx.note("curl not installed: skipped")
        return
    root, files = _root(ctx)
    srv = http_server(ctx, root=root)
    dst = os.path.join(ctx.tmpdir, "dl")
    curl(ctx, "-o", dst, f"{base_url(srv)}/static/twenty.bin")
    check(read_file(dst) == files["twenty.bin"], "curl: bytes differ")
    with open(dst, "r+b") as f:
        f.truncate(7 << 20)
    curl(ctx, "-C", "-", "-o", dst, f"{base_url(srv)}/static/twenty.bin")
    check(read_file(dst) == files["twenty.bin"], "curl -C -: bytes differ")


def test_static_slow_200mb_download_bounded(ctx):
    """A client downloading a 200 MB file at about 1 MB/s: the server's RSS,
    sampled while it reads, stays within a few MiB of where it started (the
    whole-file read this replaced held the file), and another client is
    answered meanwhile; the bytes read are the file's."""
    import time
    from harness import connect
    root = os.path.join(ctx.tmpdir, "slow")
    os.makedirs(root)
    head_bytes = ctx.rng.randbytes(4 << 20)
    path = os.path.join(root, "big.bin")
    with open(path, "wb") as f:
        f.write(head_bytes)
        f.truncate(200 * 1000 * 1000)       # the rest sparse: zeros
    srv = http_server(ctx, root=root)
    time.sleep(0.2)
    base = rss_kb(srv.pid)
    s = connect(srv.addr, rcvbuf=16384)
    s.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    got = bytearray()
    peak = base
    t0 = time.monotonic()
    s.settimeout(5 * ctx.factor)
    while time.monotonic() - t0 < 3.0:
        got += s.recv(65536)
        # about 1 MB/s: 64 KiB every 64 ms at most
        time.sleep(0.064)
        peak = max(peak, rss_kb(srv.pid))
    with Conn(srv, ctx) as c:
        c.send(get(b"/"))
        check_resp(c.read_response(), 200, what="GET / during the download")
    s.close()
    i = got.find(b"\r\n\r\n")
    check(i > 0 and got.startswith(b"HTTP/1.1 200"), f"head: {bytes(got[:80])!r}")
    check(b"content-length: 200000000\r\n" in bytes(got[:i + 2]).lower(),
          f"Content-Length of the file: {bytes(got[:i])!r}")
    body = bytes(got[i + 4:])
    check(len(body) > 1 << 20, f"only {len(body)} bytes in 3 s")
    check(body == head_bytes[:len(body)], "the bytes read differ from the file")
    ctx.log(f"200 MB download at ~1 MB/s: {len(body) >> 10} KiB read in 3 s, "
            f"RSS {base} -> peak {peak} KiB")
    if not ctx.asan:
        check(peak - base < 8 * 1024, f"RSS grew {peak - base} KiB during one slow download")
