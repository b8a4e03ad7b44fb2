"""TLS listeners under load (core/rl_tls*.c), using the helpers of
test_tls.py (its test PKI, servers, Python ssl echo connections, curl):

    tls_echo_1000_connections    1,000 TLS sessions open at once (all
                                 handshakes done before any byte is
                                 written), messages of 1 B .. 1 MiB echoed
                                 byte-exact, lockstep and pipelined, TLS 1.2
                                 and 1.3, both certificates; the server's
                                 counters agree (handshakes, closes, errors)
    tls_tiny_ring                --buffers 2 --buffer-size 512 (the smallest
                                 ring) under 50 TLS connections with messages
                                 up to 1 MiB: byte-exact, the ring ran dry
                                 (enobufs), nothing leaked, clean SIGTERM
    tls_cert_reload_under_load   scripts/http.lua, HTTPS keep-alive and
                                 new-connection clients running while SIGHUP
                                 swaps the certificate files (and once finds
                                 a broken one): no request fails, every
                                 connection begun after a reload was logged
                                 gets the new certificate
    tls_curl_post_chunked        curl: six URLs on one connection, bodies of
                                 exactly the 1 MiB limit (Content-Length and
                                 chunked) three to a connection, 3 MiB refused
                                 with 413 by scripts/http.lua and echoed by a
                                 server with an 8 MiB limit

The counters come from a small service written into the test's temporary
directory (_STATS_LUA): its tls:// listener echoes like scripts/echo.lua,
its tcp:// listener answers a line with the worker's rl_worker_stats.
"""

import os
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

from harness import (EnvCtx, Server, check, connect, fail, free_port, log_uniform,
                     proc_net_tcp_queues, recv_line)
from test_tls import (EC, HELLO, HTTP_LUA, _curl, _openssl, _read, _TlsEchoConn, certs,
                      client_context, run_tls_echo, tls_args, tls_echo_ok)


# --------------------------------------------------------------------------
# Helpers

def _need_fds(n):
    """Raise this process's RLIMIT_NOFILE soft limit to at least n (servers
    started afterwards inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        want = n if hard == resource.RLIM_INFINITY else min(n, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    check(soft >= n, f"RLIMIT_NOFILE is {soft} (hard {hard}); this test needs {n}")


_STATS_LUA = r'''
-- Written by tests/integration/test_tls_load.py.  Listener 1 (tls://)
-- echoes like scripts/echo.lua; listener 2 (tcp://) answers each line with
-- this worker's counters (rl_worker_stats) and what happened to the TLS
-- connections (opened, closed by the peer, closed for another reason).
local ffi = require "ffi"
local ringline = require "ringline"
local C = ffi.C

local W
local function worker()
  if W then return W end
  for i = 1, 64 do
    local name, v = debug.getupvalue(ringline.stats, i)
    if not name then break end
    if name == "W" then W = v end
  end
  return W
end

local FIELDS = { "accepted", "closed", "handler_errors", "enobufs", "conns", "buffers_leased",
  "tls_handshakes", "tls_resumed", "tls_handshake_failures", "tls_handshake_timeouts",
  "tls_errors" }
local opened, peer_closed, other_closed, other_reason = 0, 0, 0, "none"

return {
  listen = "tcp://127.0.0.1:7000",

  on_open = function(conn)
    if conn.listener == 1 then opened = opened + 1 end
  end,

  on_close = function(conn, reason)
    if conn.listener ~= 1 then return end
    if reason == "peer" then
      peer_closed = peer_closed + 1
    else
      other_closed = other_closed + 1
      other_reason = (tostring(reason):gsub("%s", "_"))
    end
  end,

  on_data = function(conn, data)
    if conn.listener == 1 then
      conn:send(data)
      return #data
    end
    local s = data:tostring()
    local nl = s:find("\n", 1, true)
    if not nl then return 0 end
    local st = C.rl_worker_stats(worker())
    local out = { "worker=" .. ringline.worker_id() }
    for _, f in ipairs(FIELDS) do out[#out + 1] = f .. "=" .. tostring(tonumber(st[f])) end
    out[#out + 1] = "tls_opened=" .. opened
    out[#out + 1] = "tls_peer_closed=" .. peer_closed
    out[#out + 1] = "tls_other_closed=" .. other_closed
    out[#out + 1] = "tls_other_reason=" .. other_reason
    conn:send(table.concat(out, " ") .. "\n")
    return nl
  end,
}
'''


def _stats_server(ctx, workers=2, extra=()):
    """_STATS_LUA with a tls:// listener (certificates A and B) and a tcp://
    one for the counters."""
    path = os.path.join(ctx.tmpdir, "tls_load_stats.lua")
    with open(path, "w") as f:
        f.write(_STATS_LUA)
    srv = Server(ctx, script=path,
                 listen=[f"tls://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"],
                 args=["--workers", str(workers)] + [str(a) for a in extra] + tls_args())
    ctx.servers.append(srv)
    srv.start()
    return srv


_NUMERIC = ("worker", "accepted", "closed", "handler_errors", "enobufs", "conns",
            "buffers_leased", "tls_handshakes", "tls_resumed", "tls_handshake_failures",
            "tls_handshake_timeouts", "tls_errors", "tls_opened", "tls_peer_closed",
            "tls_other_closed")


def _worker_stats(ctx, srv, workers=2):
    """{worker id: counters} from every worker: new connections to the
    tcp:// listener until each worker has answered one (SO_REUSEPORT
    spreads them at random)."""
    seen = {}
    for _ in range(400):
        s = connect(srv.addrs[1], 5 * ctx.factor)
        try:
            s.sendall(b"stats\n")
            line = recv_line(s, 5 * ctx.factor, what="the stats line").decode()
        finally:
            s.close()
        d = dict(re.findall(r"(\w+)=(\S+)", line))
        try:
            st = {k: int(d[k]) for k in _NUMERIC}
        except (KeyError, ValueError):
            fail(f"a bad stats line from the server: {line!r}")
        st["tls_other_reason"] = d.get("tls_other_reason")
        seen[st["worker"]] = st
        if len(seen) == workers:
            return seen
    fail(f"only workers {sorted(seen)} of {workers} answered the stats connections")


def _sum(stats, key):
    return sum(st[key] for st in stats.values())


def _stats_text(stats):
    keys = ("tls_handshakes", "tls_opened", "tls_peer_closed", "tls_other_closed", "tls_errors",
            "tls_handshake_timeouts", "tls_handshake_failures", "handler_errors", "enobufs",
            "conns", "buffers_leased")
    return "; ".join(f"w{w}: " + " ".join(f"{k}={st[k]}" for k in keys) +
                     f" last_other_reason={st['tls_other_reason']}"
                     for w, st in sorted(stats.items()))


def _wait_stats(ctx, srv, pred, timeout):
    """Poll the counters until pred(stats) holds; returns the last ones."""
    deadline = time.monotonic() + timeout * ctx.factor
    while True:
        st = _worker_stats(ctx, srv)
        if pred(st) or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def _check_tls_counters(ctx, srv, n, what):
    """After n TLS connections that each handshook, echoed and were closed
    by the client: the counters say exactly that."""
    st = _wait_stats(ctx, srv, lambda s: _sum(s, "tls_peer_closed") + _sum(s, "tls_other_closed") >= n,
                     10)
    text = _stats_text(st)
    check(_sum(st, "tls_handshakes") == n,
          f"{what}: the server counted {_sum(st, 'tls_handshakes')} TLS handshakes, want {n}: {text}")
    check(_sum(st, "tls_opened") == n,
          f"{what}: on_open ran for {_sum(st, 'tls_opened')} TLS connections, want {n}: {text}")
    check(_sum(st, "tls_peer_closed") == n and _sum(st, "tls_other_closed") == 0,
          f"{what}: of {n} TLS connections the clients closed, {_sum(st, 'tls_peer_closed')} closed "
          f"with reason 'peer' and {_sum(st, 'tls_other_closed')} otherwise: {text}")
    for k in ("tls_errors", "tls_handshake_timeouts", "handler_errors"):
        check(_sum(st, k) == 0, f"{what}: {k} = {_sum(st, k)}, want 0: {text}")
    return st


def _pieces(rng, size, hi):
    """Write sizes (log-uniform 1 .. hi) adding up to size."""
    out, s = [], 0
    while s < size:
        k = min(log_uniform(rng, 1, hi), size - s)
        out.append(k)
        s += k
    return out


# --------------------------------------------------------------------------
# Echo connections with messages (lockstep or pipelined) and a start barrier

class _Group:
    def __init__(self, n):
        self.n = n
        self.hold = True           # nobody writes while set
        self.handshaken = 0


class _MsgConn(_TlsEchoConn):
    """test_tls._TlsEchoConn whose writes wait: for the group's barrier (no
    byte before every connection of the group has finished its handshake)
    and, per write, for gates[k] bytes echoed (lockstep messages: the next
    message starts once the previous ones are back)."""

    def __init__(self, i, addr, sslctx, hostname, payload, sizes, gates, group, desc):
        super().__init__(i, addr, sslctx, hostname, payload, sizes)
        self.gates = gates
        self.group = group
        self.desc = desc

    def status(self):
        return super().status() + f" [{self.desc}]"

    def advance(self):
        try:
            if not self.hs:
                try:
                    self.obj.do_handshake()
                    self.hs = True
                    self.group.handshaken += 1
                except ssl.SSLWantReadError:
                    pass
            if self.hs:
                while True:
                    try:
                        d = self.obj.read(1 << 18)
                    except ssl.SSLWantReadError:
                        break
                    if not d:
                        self.error = "close_notify from the server before the whole echo"
                        break
                    if self.group.hold:
                        self.error = f"{len(d)} bytes arrived before anything was sent: {d[:40]!r}"
                        return
                    want = self.payload[self.received:self.received + len(d)]
                    if d != want:
                        k = next((j for j in range(min(len(d), len(want))) if d[j] != want[j]),
                                 min(len(d), len(want)))
                        self.error = (f"echo differs at byte {self.received + k} "
                                      f"({'more bytes than sent' if k == len(want) else 'wrong bytes'}): "
                                      f"got {d[k:k + 16]!r}, want {bytes(want[k:k + 16])!r}")
                        return
                    self.received += len(d)
                while (not self.group.hold and self.sent < len(self.payload) and
                       self.received >= self.gates[self.si] and
                       len(self.raw_out) + self.outb.pending < self.RAW_HIGH):
                    n = self.sizes[self.si]
                    self.obj.write(self.payload[self.sent:self.sent + n])
                    self.si += 1
                    self.sent += n
        except ssl.SSLError as e:
            self.error = f"TLS error: {e}"
        self.raw_out += self.outb.read()


def _run_group(ctx, conns, group, timeout, srv, on_release=None):
    """test_tls.run_tls_echo's loop for _MsgConn: when the last handshake
    is done, on_release() runs (the clients wait meanwhile), then every
    connection starts writing.  Fails on the first error, or with the
    stuck connections and the server's socket queues at the timeout."""
    sel = selectors.DefaultSelector()
    live = set()
    for c in conns:
        c.ev = c.events()
        sel.register(c.sock, c.ev, c)
        live.add(c)
    t0 = time.monotonic()
    deadline = t0 + timeout
    t_release = None

    def update(c):
        ev = c.events()
        if ev != c.ev:
            sel.modify(c.sock, ev, c)
            c.ev = ev

    try:
        while live:
            if time.monotonic() > deadline:
                stuck = sorted(live, key=lambda c: c.i)
                sq, _ = proc_net_tcp_queues(srv.port)
                fail(f"TLS echo: {len(stuck)} of {len(conns)} connections not done after {timeout:.0f}s "
                     f"({group.handshaken} handshakes done, barrier {'held' if group.hold else 'released'}): "
                     + "; ".join(c.status() for c in stuck[:5]) +
                     f"; server side (send-q, recv-q): {sorted(sq)[-6:]}")
            for key, mask in sel.select(0.5):
                c = key.data
                c.on_event(mask)
                if c.error:
                    fail(f"TLS echo: {c.status()}: {c.error}")
                if c.done:
                    sel.unregister(c.sock)
                    c.sock.close()
                    live.discard(c)
                    continue
                update(c)
            if group.hold and group.handshaken == group.n:
                t_release = time.monotonic()
                if on_release:
                    on_release()
                group.hold = False
                for c in list(live):
                    c.on_event(0)          # write what the gates allow, send it
                    if c.error:
                        fail(f"TLS echo: {c.status()}: {c.error}")
                    update(c)
    finally:
        for c in conns:
            c.sock.close()
        sel.close()
    return (t_release or t0) - t0, time.monotonic() - (t_release or t0)


def _msg_conns(ctx, addr, group, plans, pool, piece_hi=64 << 10):
    """One _MsgConn per plan (a list of message sizes); every third TLS 1.2,
    every fifth with SNI *.example.test (certificate B, EC), about half
    lockstep."""
    rng = ctx.rng
    ctx13 = client_context(minimum=ssl.TLSVersion.TLSv1_3)
    ctx12 = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    conns = []
    for i, msgs in enumerate(plans):
        total = sum(msgs)
        off = rng.randrange(len(pool) - total + 1)
        payload = pool[off:off + total]
        lockstep = rng.random() < 0.5
        sizes, gates, start = [], [], 0
        for m in msgs:
            p = _pieces(rng, m, piece_hi)
            sizes += p
            gates += [start if lockstep else 0] * len(p)
            start += m
        host = "localhost" if i % 5 else f"h{i}.example.test"
        tls12 = i % 3 == 2
        desc = (f"{'TLS 1.2' if tls12 else 'TLS 1.3'}, {'lockstep' if lockstep else 'pipelined'}, "
                f"messages {msgs}")
        conns.append(_MsgConn(i, addr, ctx12 if tls12 else ctx13, host, payload, sizes, gates,
                              group, desc))
    return conns


# --------------------------------------------------------------------------
# 1. 1,000 connections

def test_tls_echo_1000_connections(ctx):
    """1,000 concurrent TLS connections to an echo service (2 workers): all
    1,000 handshakes finish before any connection writes (the server counts
    1,000 TLS connections open at once), then each echoes 1-4 messages
    (log-uniform to 64 KiB; one in 25 connections a message of 256 KiB..1
    MiB, one in 100 exactly 1 MiB), lockstep or pipelined, written in
    pieces of 1 B..64 KiB, checked byte for byte.  The counters: exactly
    1,000 handshakes and on_opens, 1,000 closes by the peer, no TLS or
    handler errors, no handshake timeouts."""
    n = 1000
    _need_fds(2 * n + 512)
    srv = _stats_server(ctx, 2, ["--max-conns", 4 * n])
    rng = ctx.rng
    pool = memoryview(rng.randbytes(6 << 20))
    big_every = 25 if ctx.volume >= 1 else 50
    plans = []
    for i in range(n):
        msgs = [log_uniform(rng, 1, 64 << 10) for _ in range(rng.randint(1, 4))]
        if i % big_every == 3:
            msgs[rng.randrange(len(msgs))] = log_uniform(rng, 256 << 10, 1 << 20)
        if i % 100 == 7:
            msgs[-1] = 1 << 20
        plans.append(msgs)
    total = sum(map(sum, plans))
    check(total < 150e6, f"test plan too big: {total} bytes")
    group = _Group(n)
    conns = _msg_conns(ctx, srv.addrs[0], group, plans, pool)
    at_release = {}

    def on_release():
        st = _wait_stats(ctx, srv, lambda s: _sum(s, "tls_opened") - _sum(s, "tls_peer_closed")
                         - _sum(s, "tls_other_closed") >= n, 10)
        at_release["open"] = (_sum(st, "tls_opened") - _sum(st, "tls_peer_closed")
                              - _sum(st, "tls_other_closed"))
        at_release["text"] = _stats_text(st)

    t_hs, t_data = _run_group(ctx, conns, group, 60 * ctx.factor, srv, on_release)
    ctx.log(f"{n} TLS handshakes in {t_hs:.1f}s; then {total / 1e6:.1f} MB echoed each way in "
            f"{t_data:.1f}s")
    check(at_release.get("open") == n,
          f"when every client had finished its handshake the server had {at_release.get('open')} "
          f"TLS connections open (on_open minus on_close), want {n}: {at_release.get('text')}")
    st = _check_tls_counters(ctx, srv, n, f"{n} connections")
    ctx.log(_stats_text(st))
    tls_echo_ok(ctx, srv)
    srv.assert_alive()


test_tls_echo_1000_connections.time_limit = 90


# --------------------------------------------------------------------------
# 2. The smallest ring

def test_tls_tiny_ring(ctx):
    """--buffers 2 --buffer-size 512 (the smallest ring, and so 2 plain
    buffers of 512 B), 2 workers, 50 TLS connections (test_tls.run_tls_echo,
    pipelined) of 1 B .. 1 MiB each (four of exactly 1 MiB) written in
    pieces of 1 B..256 KiB: every byte back in order; the ring ran dry
    (enobufs > 0); afterwards no buffer is still leased, fresh connections
    still echo, and SIGTERM exits 0."""
    srv = _stats_server(ctx, 2, ["--buffers", 2, "--buffer-size", 512])
    rng = ctx.rng
    n = 50
    pool = memoryview(rng.randbytes(3 << 20))
    ctx13 = client_context(minimum=ssl.TLSVersion.TLSv1_3)
    ctx12 = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    cap = int((1 << 20) * ctx.volume)
    conns, total = [], 0
    for i in range(n):
        size = cap if i % 12 == 5 else log_uniform(rng, 1, cap)
        off = rng.randrange(len(pool) - size + 1)
        host = "localhost" if i % 4 else f"t{i}.example.test"
        conns.append(_TlsEchoConn(i, srv.addrs[0], ctx12 if i % 3 == 1 else ctx13, host,
                                  pool[off:off + size], _pieces(rng, size, 256 << 10)))
        total += size
    t0 = time.monotonic()
    run_tls_echo(ctx, srv.addrs[0], conns, 60 * ctx.factor, srv)
    ctx.log(f"{n} TLS connections echoed {total / 1e6:.1f} MB each way through a 2 x 512 B ring "
            f"in {time.monotonic() - t0:.1f}s")
    st = _check_tls_counters(ctx, srv, n, "tiny ring")
    text = _stats_text(st)
    ctx.log(text)
    check(_sum(st, "enobufs") > 0, f"the 2-buffer ring never ran dry (enobufs 0): the test did "
          f"not test what it says: {text}")
    # Each worker's only lease is the stats request it is answering.
    for w, s in st.items():
        check(s["buffers_leased"] <= 1, f"worker {w}: {s['buffers_leased']} receive buffers still "
              f"leased with no TLS connection open: {text}")
    for _ in range(6):          # SO_REUSEPORT: likely both workers
        tls_echo_ok(ctx, srv, payload=rng.randbytes(100000))
    srv.assert_alive()
    rc = srv.stop(signal.SIGTERM)
    check(rc == 0, f"exit code {rc} on SIGTERM after the tiny-ring echo: {srv.stderr_tail()}")
    err = srv.stderr()
    bad = [ln for ln in err.splitlines() if re.search(r" (error|warn): ", ln)]
    check(not bad, "the server logged errors or warnings:\n      " + "\n      ".join(bad[:10]))


test_tls_tiny_ring.time_limit = 90


# --------------------------------------------------------------------------
# 3. Certificate reload under load

_CERT_C = {}


def _cert_c():
    """A third certificate for localhost (EC, OU=certC), signed by the test
    root CA like A: a client verifying "localhost" accepts A and C."""
    c = certs()
    if c.dir not in _CERT_C:
        cnf = os.path.join(c.dir, "openssl.cnf")
        _openssl(["req", "-new"] + EC + ["-nodes", "-keyout", "c.key", "-out", "c.csr", "-subj",
                  "/O=ringline test/OU=certC/CN=localhost", "-config", cnf], c.dir)
        _openssl(["x509", "-req", "-in", "c.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                  "-set_serial", "200", "-days", "3", "-out", "c.pem", "-extfile", cnf,
                  "-extensions", "srv_a"], c.dir)
        os.chmod(os.path.join(c.dir, "c.key"), 0o600)
        _CERT_C[c.dir] = (os.path.join(c.dir, "c.pem"), os.path.join(c.dir, "c.key"))
    return _CERT_C[c.dir]


def _ou(sock):
    for rdn in sock.getpeercert().get("subject", ()):
        for k, v in rdn:
            if k == "organizationalUnitName":
                return v
    return None


class _Https:
    """One verified HTTPS connection (Python ssl, SNI localhost) with a
    minimal HTTP/1.1 client: Content-Length responses (scripts/http.lua)."""

    def __init__(self, addr, sslctx, timeout, session=None):
        self.t_start = time.monotonic()
        raw = socket.create_connection(addr, timeout)
        try:
            self.s = sslctx.wrap_socket(raw, server_hostname="localhost", session=session)
        except BaseException:
            raw.close()
            raise
        self.t_hs = time.monotonic()
        self.ou = _ou(self.s)
        self.reused = self.s.session_reused
        self.buf = bytearray()
        self.requests = 0

    def close(self):
        self.s.close()

    def _fill(self):
        d = self.s.recv(1 << 16)
        if not d:
            raise ConnectionError(f"EOF from the server (buffered {bytes(self.buf[:80])!r})")
        self.buf += d

    def request(self, method, path, body=b"", close=False):
        req = b"%s %s HTTP/1.1\r\nHost: localhost\r\n" % (method, path)
        if method == b"POST":
            req += b"Content-Length: %d\r\nContent-Type: application/octet-stream\r\n" % len(body)
        if close:
            req += b"Connection: close\r\n"
        self.s.sendall(req + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\r\n\r\n")
        head = bytes(self.buf[:i])
        del self.buf[:i + 4]
        m = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
        cl = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        if not m or not cl:
            raise ValueError(f"a bad response head: {head[:300]!r}")
        n = int(cl.group(1))
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.requests += 1
        return int(m.group(1)), out


class _ReloadLoad:
    """Client threads against an HTTPS server; every failure is kept."""

    def __init__(self, ctx, addr):
        self.ctx = ctx
        self.addr = addr
        self.sslctx = client_context()
        self.timeout = 10 * ctx.factor
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors = []
        self.conns = []            # (t_start, t_handshake_done, ou, kind)
        self.ok = 0
        self.long_requests = 0     # on the one connection kept open throughout

    def record(self, h, kind):
        with self.lock:
            self.conns.append((h.t_start, h.t_hs, h.ou, kind))

    def error(self, what, e):
        with self.lock:
            self.errors.append(f"{what}: {type(e).__name__}: {e} (at {time.monotonic():.3f})")

    def one(self, h, rng, close=False):
        if rng.random() < 0.5:
            status, body = h.request(b"GET", b"/", close=close)
            want = HELLO
        else:
            want = rng.randbytes(log_uniform(rng, 1, 32 << 10))
            status, body = h.request(b"POST", b"/echo", want, close=close)
        if status != 200 or body != want:
            raise ValueError(f"status {status}, {len(body)} bytes "
                             f"({'equal' if body == want else 'different'}; want {len(want)})")
        with self.lock:
            self.ok += 1

    def keepalive(self, seed):
        rng = random.Random(seed)
        while not self.stop.is_set():
            h = None
            try:
                h = _Https(self.addr, self.sslctx, self.timeout)
                self.record(h, "keep-alive")
                for _ in range(rng.randint(5, 40)):
                    if self.stop.is_set():
                        break
                    self.one(h, rng)
            except Exception as e:
                self.error(f"keep-alive request {h.requests + 1 if h else 0} on a connection "
                           f"with {h.ou if h else '(no handshake)'}", e)
            finally:
                if h:
                    h.close()

    def fresh(self, seed):
        rng = random.Random(seed)
        while not self.stop.is_set():
            h = None
            try:
                h = _Https(self.addr, self.sslctx, self.timeout)
                self.record(h, "new")
                self.one(h, rng, close=True)
            except Exception as e:
                self.error(f"a request on a new connection ({h.ou if h else 'no handshake'})", e)
            finally:
                if h:
                    h.close()

    def long_lived(self, seed):
        rng = random.Random(seed)
        h = None
        try:
            h = _Https(self.addr, self.sslctx, self.timeout)
            while not self.stop.is_set():
                self.one(h, rng)
                self.long_requests += 1
                time.sleep(0.01)
        except Exception as e:
            self.error(f"request {h.requests + 1 if h else 0} on the connection open "
                       f"throughout ({h.ou if h else 'no handshake'})", e)
        finally:
            if h:
                h.close()


def test_tls_cert_reload_under_load(ctx):
    """scripts/http.lua over TLS, 2 workers, one certificate pair read from
    files.  Seven client threads (Python ssl, verifying against the test
    CA, SNI localhost): three doing keep-alive GET / and POST /echo (up to
    32 KiB, echo checked) on connections of 5-40 requests, three doing one
    request per new connection, one on a single connection open throughout.
    Meanwhile SIGHUP six times, the files swapped between certificate A and
    C (both for localhost, OU certA/certC) and once replaced by a broken
    certificate.  Expected: not one request fails; each reload is logged
    ("certificate(s) reloaded", or for the broken file "not reloaded, the
    old ones still serve"); every connection whose connect began after that
    line was logged (and finished before the next SIGHUP) has the
    certificate just loaded (the old one after the broken file); each
    phase has such connections; after the last reload fresh connections get
    it; a TLS 1.2 session from before the last SIGHUP still connects after
    it (resumed with its own certificate, or a full handshake with the new
    one)."""
    c = certs()
    c_cert, c_key = _cert_c()
    pairs = {"certA": (c.a_cert, c.a_key), "certC": (c_cert, c_key)}
    cert, key = os.path.join(ctx.tmpdir, "site.pem"), os.path.join(ctx.tmpdir, "site.key")

    def install(ou):
        for src, dst in zip(pairs[ou], (cert, key)):
            with open(src, "rb") as f:
                data = f.read()
            tmp = dst + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o600)
            os.replace(tmp, dst)

    install("certA")
    srv = Server(EnvCtx(ctx, {}), script=HTTP_LUA, listen=[f"tls://127.0.0.1:{free_port()}"],
                 args=["--workers", "2", "--tls-cert", cert, "--tls-key", key,
                       "--tls-alpn", "http/1.1"])
    ctx.servers.append(srv)
    srv.start()
    addr = srv.addrs[0][1]
    load = _ReloadLoad(ctx, addr)
    rng = ctx.rng
    threads = ([threading.Thread(target=load.keepalive, args=(rng.getrandbits(64),), daemon=True)
                for _ in range(3)] +
               [threading.Thread(target=load.fresh, args=(rng.getrandbits(64),), daemon=True)
                for _ in range(3)] +
               [threading.Thread(target=load.long_lived, args=(rng.getrandbits(64),), daemon=True)])
    ok_re = re.compile(r"SIGHUP: tls: \d+ certificate\(s\) reloaded")
    bad_re = re.compile(r"SIGHUP: certificates not reloaded, the old ones still serve")
    # phases: (t_sighup, t_logged, OU serving from t_logged on)
    phases = [(0.0, time.monotonic(), "certA")]
    ctx12 = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    dwell = 0.5 * ctx.factor
    try:
        for t in threads:
            t.start()
        time.sleep(dwell)
        for step in ("certC", "certA", "certC", "broken", "certA", "certC"):
            if step == "certC" and len(phases) == 6:
                # Before the last reload: a TLS 1.2 session that resumes.
                h = _Https(addr, ctx12, 5 * ctx.factor)
                h.request(b"GET", b"/")
                sess = h.s.session
                h.close()
                h = _Https(addr, ctx12, 5 * ctx.factor, session=sess)
                resumed_before = h.reused
                h.close()
            n_ok, n_bad = len(ok_re.findall(srv.stderr())), len(bad_re.findall(srv.stderr()))
            if step == "broken":
                with open(cert, "w") as f:
                    f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                            "-----END CERTIFICATE-----\n")
            else:
                install(step)
            t_hup = time.monotonic()
            srv.send_signal(signal.SIGHUP)
            deadline = t_hup + 5 * ctx.factor
            while True:
                err = srv.stderr()
                if len(ok_re.findall(err)) > n_ok or len(bad_re.findall(err)) > n_bad:
                    break
                srv.assert_alive()
                if time.monotonic() > deadline:
                    fail(f"SIGHUP ({step}): no 'reloaded' or 'not reloaded' line logged within "
                         f"{5 * ctx.factor:.0f}s: {srv.stderr_tail()}")
                time.sleep(0.01)
            t_log = time.monotonic()
            reloaded = len(ok_re.findall(err)) > n_ok
            check(reloaded == (step != "broken"),
                  f"SIGHUP with {'a broken certificate file' if step == 'broken' else step}: "
                  f"the log says {'reloaded' if reloaded else 'not reloaded'}: {srv.stderr_tail()}")
            phases.append((t_hup, t_log, phases[-1][2] if step == "broken" else step))
            time.sleep(dwell)
            check(not load.errors, f"after the SIGHUP with {step}: {len(load.errors)} failed "
                  f"requests: " + "; ".join(load.errors[:5]))
        # After the last reload: fresh connections, either worker.
        for _ in range(6):
            h = _Https(addr, load.sslctx, 5 * ctx.factor)
            try:
                got = h.ou
                status, body = h.request(b"GET", b"/")
            finally:
                h.close()
            check(got == "certC" and status == 200 and body == HELLO,
                  f"after the last reload a new connection got {got}, status {status}, want "
                  f"certC and 200")
        h = _Https(addr, ctx12, 5 * ctx.factor, session=sess)
        try:
            after = (h.reused, h.ou, h.request(b"GET", b"/"))
        finally:
            h.close()
    finally:
        load.stop.set()
        for t in threads:
            t.join(15 * ctx.factor)
    check(not any(t.is_alive() for t in threads), "client threads still running 15 s after the stop")
    check(not load.errors, f"{len(load.errors)} failed requests (of {load.ok + len(load.errors)}): "
          + "; ".join(load.errors[:6]))
    check(resumed_before, "TLS 1.2 session resumption did not work before the reload (the check "
          "after it would mean nothing)")
    check(after[2] == (200, HELLO), f"a client offering a pre-reload session: {after[2]}")
    # Whether a ticket outlives a reload is the ticket keys' business
    # (process-wide keys since --tls-ticket-rotation: it resumes); either way
    # the certificate must match: the session's own (A) when resumed, the
    # new one (C) after a full handshake.
    check(after[1] == ("certA" if after[0] else "certC"),
          f"a TLS 1.2 session from before the last SIGHUP: reused={after[0]}, peer certificate "
          f"{after[1]}; want certA when resumed, else certC")
    ctx.log(f"a pre-reload TLS 1.2 session after the last SIGHUP: "
            f"{'resumed' if after[0] else 'full handshake'}")
    # Every connection against the timeline.
    wrong, per_phase = [], [0] * len(phases)
    for t_start, t_hs, ou, kind in load.conns:
        for k, (_, t_log, want) in enumerate(phases):
            nxt = phases[k + 1][0] if k + 1 < len(phases) else float("inf")
            if t_start >= t_log and t_hs < nxt:
                per_phase[k] += 1
                if ou != want:
                    wrong.append(f"{kind} connection begun {t_start - t_log:.3f}s after the log line "
                                 f"of phase {k} got {ou}, want {want}")
        if ou not in pairs:
            wrong.append(f"{kind} connection got certificate OU {ou}")
    check(not wrong, f"{len(wrong)} connections with the wrong certificate: " + "; ".join(wrong[:6]))
    check(min(per_phase) >= 3, f"connections begun and finished within each phase: {per_phase}: "
          "too few to check")
    check(load.long_requests >= 20, f"the connection open throughout made only {load.long_requests} "
          "requests")
    err = srv.stderr()
    check(len(bad_re.findall(err)) == 1 and len(ok_re.findall(err)) == 5,
          f"the log: {len(ok_re.findall(err))} reloads and {len(bad_re.findall(err))} failed ones, "
          f"want 5 and 1: {srv.stderr_tail()}")
    ctx.log(f"{load.ok} requests, {len(load.conns)} connections, per phase {per_phase}, "
            f"{load.long_requests} on the long one")
    srv.assert_alive()


test_tls_cert_reload_under_load.time_limit = 60


# --------------------------------------------------------------------------
# 4. curl: keep-alive, big and chunked bodies

_BIG_HTTP_LUA = r'''
-- Written by tests/integration/test_tls_load.py: POST /echo with an 8 MiB
-- body limit (scripts/http.lua keeps the default 1 MiB).
local http = require "ringline.http.server"
local app = http.new({ max_body = 8 * 1048576 })
app:get("/", function(req, res) res:send("hello world\n", "text/plain") end)
app:post("/echo", function(req, res) res:send(req:body() or "", "application/octet-stream") end)
return app:service({ listen = "tcp://127.0.0.1:8080" })
'''


def test_tls_curl_post_chunked(ctx):
    """curl --cacert over HTTPS (test_tls_curl_http does two URLs and
    300 KB bodies): against scripts/http.lua six URLs in one invocation on
    one connection (num_connects 1,0,0,0,0,0, five "Re-using existing
    connection"); three POSTs of exactly the 1 MiB limit per invocation,
    with Content-Length and chunked, on one connection, echoed byte-exact;
    3 MiB refused with 413 either way, and the server still serving; then a
    server with an 8 MiB limit echoes 3 MiB (Content-Length and chunked,
    two per connection) byte-exact."""
    c = certs()
    srv = Server(EnvCtx(ctx, {}), script=HTTP_LUA, listen=[f"tls://127.0.0.1:{free_port()}"],
                 args=["--workers", "2"] + tls_args("http/1.1"))
    ctx.servers.append(srv)
    srv.start()
    port = srv.port
    common = ["--cacert", c.ca, "--resolve", f"localhost:{port}:127.0.0.1"]
    base = f"https://localhost:{port}"
    d = ctx.tmpdir

    def outs(k, tag):
        return [os.path.join(d, f"{tag}{i}.out") for i in range(k)]

    # Six URLs, one connection.
    paths = ["/", "/echo", "/", "/echo", "/echo", "/"]
    o = outs(len(paths), "get")
    args = common + ["-v", "-w", "%{num_connects} %{http_code} %{ssl_verify_result}\n"]
    for p, f in zip(paths, o):
        args += ["-o", f, base + p]
    r = _curl(ctx, args)
    err = r.stderr.decode(errors="replace")
    lines = r.stdout.decode().split("\n")[:-1]
    check(lines == ["1 200 0"] + ["0 200 0"] * 5,
          f"six URLs: -w gave {lines}, want one connect and 200 each: {err[-1500:]}")
    check(err.count("Re-using existing connection") == 5,
          f"six URLs: {err.count('Re-using existing connection')} 'Re-using existing connection', "
          f"want 5: {err[-1500:]}")
    for p, f in zip(paths, o):
        got = _read(f)
        if p == "/":
            check(got == HELLO, f"GET / (keep-alive): {got[:200]!r}")
        else:
            check(f"host: localhost:{port}".encode() in got.lower(), f"GET /echo: {got[:300]!r}")

    def posts(url, body, k, chunked, tag, expect=200, reuse=True):
        src = os.path.join(d, f"{tag}.body")
        with open(src, "wb") as f:
            f.write(body)
        o = outs(k, tag)
        args = common + ["-v", "--data-binary", "@" + src, "-H", "Content-Type: application/octet-stream",
                         "-w", "%{num_connects} %{http_code}\n"]
        if chunked:
            args += ["-H", "Transfer-Encoding: chunked"]
        if expect == 200:
            args += ["-H", "Expect:"]
        for f in o:
            args += ["-o", f, url]
        r = _curl(ctx, args, timeout=60)
        err = r.stderr.decode(errors="replace")
        lines = r.stdout.decode().split("\n")[:-1]
        what = f"{k} POSTs of {len(body)} bytes ({'chunked' if chunked else 'Content-Length'}) to {url}"
        codes = [ln.split()[1] for ln in lines]
        check(codes == [str(expect)] * k, f"{what}: statuses {lines}, want {expect}: {err[-1200:]}")
        if reuse:
            check([ln.split()[0] for ln in lines] == ["1"] + ["0"] * (k - 1)
                  and err.count("Re-using existing connection") == k - 1,
                  f"{what}: not one connection: {lines}: {err[-1200:]}")
        if expect == 200:
            for i, f in enumerate(o):
                got = _read(f)
                check(got == body, f"{what}: response {i + 1}: {len(got)} of {len(body)} bytes, "
                      f"{'equal' if got == body else 'different'}")
        return err

    limit = 1 << 20
    body1 = ctx.rng.randbytes(limit)
    posts(f"{base}/echo", body1, 3, False, "cl1m")
    posts(f"{base}/echo", body1, 3, True, "ch1m")
    big = ctx.rng.randbytes(3 << 20)
    # Over the limit: refused; the server closes the connection after the
    # 413, so each of two URLs gets its own.
    posts(f"{base}/echo", big, 2, False, "cl3m", expect=413, reuse=False)
    src = os.path.join(d, "ch3m.body")
    with open(src, "wb") as f:
        f.write(big)
    # Chunked: the server sends 100 Continue, finds the body over the limit
    # part way, answers 413 and closes while curl is still sending.  Known
    # gap (README, TLS): with no lingering close, the close with the upload
    # still arriving resets the connection, and over TLS curl's next write
    # can fail ("(55) Send failure: Broken pipe", http_code 100) before it
    # reads the 413: about 1 in 10.  Each run gets the 413 or that failure,
    # nothing else; at least one gets the 413.
    exe = shutil.which("curl")
    results = []
    for _ in range(8):
        p = subprocess.run(
            [exe, "-sS", "--max-time", str(int(30 * ctx.factor))] + common +
            ["--data-binary", "@" + src, "-H", "Transfer-Encoding: chunked", "-o", os.devnull,
             "-w", "%{http_code}", f"{base}/echo"], capture_output=True, timeout=40 * ctx.factor)
        results.append((p.stdout.decode().strip(), p.returncode,
                        p.stderr.decode(errors="replace").strip()[-120:]))
    wrong = [r for r in results if r[0] != "413" and r[1] != 55]
    check(not wrong, f"a chunked 3 MiB POST over the 1 MiB limit: {wrong[:3]}")
    got = sum(1 for r in results if r[0] == "413")
    check(got >= 1, f"no curl run of 8 got the 413: {results[:3]}")
    if got < len(results):
        ctx.note(f"chunked 413 over TLS: {len(results) - got} of {len(results)} curl runs "
                 f"reset before reading it (no lingering close)")
    r = _curl(ctx, common + ["-o", os.path.join(d, "after.out"), "-w", "%{http_code}", f"{base}/"])
    check(r.stdout.decode() == "200" and _read(os.path.join(d, "after.out")) == HELLO,
          "GET / after the refused bodies")
    srv.assert_alive()
    # A server that takes 3 MiB.
    script = os.path.join(d, "big_http.lua")
    with open(script, "w") as f:
        f.write(_BIG_HTTP_LUA)
    srv2 = Server(EnvCtx(ctx, {}), script=script, listen=[f"tls://127.0.0.1:{free_port()}"],
                  args=["--workers", "2"] + tls_args("http/1.1"))
    ctx.servers.append(srv2)
    srv2.start()
    port = srv2.port
    common = ["--cacert", c.ca, "--resolve", f"localhost:{port}:127.0.0.1"]
    url = f"https://localhost:{port}/echo"
    posts(url, big, 2, False, "cl3m-ok")
    posts(url, big, 2, True, "ch3m-ok")
    srv2.assert_alive()
