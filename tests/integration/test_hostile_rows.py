"""The hostile-clients table (issue #20), one test per row, at the default
--high-water / --low-water: clients that pipeline requests as fast as the
server takes them and never read the answers cost each bundled script a
bounded amount of memory per connection (beyond the receive ring, which all
connections share), and a fresh client is answered meanwhile.

Before the server's own stop at the high-water mark these rows cost 1 to
23 MiB per connection (README, "Hostile clients"); the bound checked here
is 192 KiB, three times what they cost now (~25-67 KiB), so that a
regression of the mechanism fails and the noise of RSS does not."""

import os
import socket
import time

from harness import EnvCtx, Server, check, connect, recv_exact, ring_kb, rss_kb

CONNS = 40
SECONDS = 1.5
LIMIT_KIB = 192
VALUE = b"v" * 4096


def _start(ctx, script, env=None, args=()):
    srv = Server(EnvCtx(ctx, env or {}), script=script, args=["--workers", "1"] + list(args))
    ctx.servers.append(srv)
    srv.start()
    return srv


def _resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def _ask(srv, req, want, ctx):
    """One fresh client, one request: the answer starts with want."""
    s = connect(srv.addr, timeout=5 * ctx.factor)
    try:
        s.sendall(req)
        got = recv_exact(s, len(want), timeout=5 * ctx.factor, what="a fresh client's answer")
    finally:
        s.close()
    return got == want


def _beyond_ring(pid):
    return rss_kb(pid) - ring_kb(pid)


def _flood(srv, req, n, seconds):
    socks = []
    for _ in range(n):
        s = connect(srv.addr, rcvbuf=4096)
        s.setblocking(False)
        socks.append(s)
    peak = _beyond_ring(srv.pid)
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        for s in socks:
            try:
                s.send(req)
            except OSError:
                pass        # a full socket, or closed by the server: both bounded
        peak = max(peak, _beyond_ring(srv.pid))
        time.sleep(0.005)
    return socks, peak


def _row(ctx, srv, req, probe, want, what):
    # A first, small flood: code run for the first time, JIT traces and the
    # allocator's arenas are the process's, not a connection's.
    socks, _ = _flood(srv, req, 4, 0.5)
    for s in socks:
        s.close()
    time.sleep(0.3)
    before = _beyond_ring(srv.pid)
    socks, peak = _flood(srv, req, CONNS, SECONDS)
    try:
        check(_ask(srv, probe, want, ctx), f"{what}: a fresh client was not answered during the flood")
        peak = max(peak, _beyond_ring(srv.pid))
    finally:
        for s in socks:
            s.close()
    per_conn = (peak - before) / CONNS
    # Under ASan freed memory waits in a quarantine: RSS says nothing of
    # live bytes there, so only the plain build is held to the bound.
    if not ctx.asan:
        check(per_conn <= LIMIT_KIB,
              f"{what}: {per_conn:.1f} KiB per non-reading client beyond the ring "
              f"(RSS beyond the ring {before} -> {peak} KiB), want <= {LIMIT_KIB}")
    ctx.note(f"{what}: {per_conn:.1f} KiB per non-reading client beyond the ring "
             f"({CONNS} clients, {SECONDS:g} s)")
    return per_conn


def _http(ctx, root=None):
    root = root or os.path.join(ctx.tmpdir, "rows-root")
    os.makedirs(root, exist_ok=True)
    return _start(ctx, "scripts/http.lua", env={"RINGLINE_HTTP_ROOT": root})


def test_hostile_row_http_get(ctx):
    """http.lua, pipelined `GET /` (64 per write), never read."""
    srv = _http(ctx)
    get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    _row(ctx, srv, get * 64, get, b"HTTP/1.1 200", "http GET /")


def test_hostile_row_http_static(ctx):
    """http.lua, pipelined `GET` of a 1 MiB static file (4 per write)."""
    root = os.path.join(ctx.tmpdir, "rows-static")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    srv = _http(ctx, root)
    req = b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
    _row(ctx, srv, req * 4, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200",
         "http GET of a 1 MiB file")


def _seed_redis(srv):
    s = connect(srv.addr)
    s.sendall(_resp(b"SET", b"hostile", VALUE))
    check(recv_exact(s, 5, timeout=5, what="SET's reply") == b"+OK\r\n", "SET failed")
    s.close()


def test_hostile_row_redis(ctx):
    """redis.lua, pipelined `GET` of a 4 KiB value (256 per write)."""
    srv = _start(ctx, "scripts/redis.lua")
    _seed_redis(srv)
    get = _resp(b"GET", b"hostile")
    _row(ctx, srv, get * 256, get, b"$4096\r\n", "redis GET 4 KiB")


def test_hostile_row_memcached(ctx):
    """memcached.lua, pipelined `get` of a 4 KiB value (512 per write)."""
    srv = _start(ctx, "scripts/memcached.lua")
    s = connect(srv.addr)
    s.sendall(b"set hostile 0 0 %d\r\n%s\r\n" % (len(VALUE), VALUE))
    check(recv_exact(s, 8, timeout=5, what="set's reply") == b"STORED\r\n", "set failed")
    s.close()
    get = b"get hostile\r\n"
    _row(ctx, srv, get * 512, get, b"VALUE hostile 0 4096\r\n", "memcached get 4 KiB")


def test_hostile_row_echo(ctx):
    """echo.lua, 64 KiB writes, never read."""
    srv = _start(ctx, "scripts/echo.lua")
    _row(ctx, srv, b"x" * 65536, b"hello\n", b"hello\n", "echo 64 KiB writes")


def test_hostile_row_proxy(ctx):
    """proxy.lua in front of redis-server 7, pipelined `GET` of 4 KiB: the
    proxy's memory (redis-server's own is not bounded: it has no output
    limit for normal clients).  The fresh client's answer comes through the
    proxy from the same redis-server the flood keeps busy."""
    from test_proxy import _need, _start_redis
    if not _need(ctx, "redis-server", pkg="redis-server"):
        return
    p, port, log = _start_redis(ctx)
    try:
        s = connect((socket.AF_INET, ("127.0.0.1", port)))
        s.sendall(_resp(b"SET", b"hostile", VALUE))
        check(recv_exact(s, 5, timeout=5, what="SET's reply") == b"+OK\r\n", "SET failed")
        s.close()
        px = _start(ctx, "scripts/proxy.lua",
                    env={"RINGLINE_PROXY_UPSTREAMS": f"tcp://127.0.0.1:{port}",
                         "RINGLINE_PROXY_CHECK_INTERVAL": "0"})
        get = _resp(b"GET", b"hostile")
        _row(ctx, px, get * 256, get, b"$4096\r\n", "proxy -> redis-server GET 4 KiB")
    finally:
        p.kill()
        p.wait()
        log.close()


for _t in (test_hostile_row_http_get, test_hostile_row_http_static, test_hostile_row_redis,
           test_hostile_row_memcached, test_hostile_row_echo, test_hostile_row_proxy):
    _t.time_limit = 30
