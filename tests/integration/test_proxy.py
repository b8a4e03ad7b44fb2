"""TCP proxy (scripts/proxy.lua): byte-exact forwarding for many concurrent
connections, round robin and leastconn, upstreams that die, refuse or never
answer, requests sent before the upstream connect completes, active health
checks, half-close both ways, backpressure against a
slow reader, the idle timeout, and real protocols (redis, HTTP with curl).

Upstreams are ringline processes (scripts/echo.lua, or
tests/fixtures/proxy/ident.lua: an echo that first sends "ident <pid>\\n" so
a client can tell which upstream it got) or small Python servers in a thread
of the test process.  The proxy's settings come from the environment.

After most tests the proxy must hold no connection any more: its sockets
(/proc/PID/fd matched with /proc/net/tcp) other than listeners and connects
in progress must all be closed.
"""

import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import harness
from harness import (EnvCtx, ECHO_LUA, PatternStream, Server, StreamClient, TestFailure,
                     assert_clients_ok, check, connect, echo_clients, fail, free_port,
                     log_uniform, make_pool, read_until_closed, recv_exact, recv_line,
                     run_clients, wait_for)

PROXY_LUA = "scripts/proxy.lua"
IDENT_LUA = "tests/fixtures/proxy/ident.lua"
HTTP_LUA = "scripts/http.lua"
MB = 1 << 20
RE_IDENT = re.compile(rb"^ident (\d+)\n$")


# --------------------------------------------------------------------------
# Servers

def url_of(srv_or_port):
    port = srv_or_port if isinstance(srv_or_port, int) else srv_or_port.port
    return f"tcp://127.0.0.1:{port}"


def start_proxy(ctx, upstreams, workers=2, name="proxy", args=(), listen=None, env_listen=False,
                env=None, **settings):
    """scripts/proxy.lua in front of upstreams (URLs).  settings become
    RINGLINE_PROXY_<NAME> variables (balance="leastconn", idle_timeout=300,
    ...).  env_listen: give the address by RINGLINE_PROXY_LISTEN instead of
    --listen.  env: more environment variables."""
    env = dict(env or {}, RINGLINE_PROXY_UPSTREAMS=",".join(upstreams))
    for k, v in settings.items():
        env["RINGLINE_PROXY_" + k.upper()] = str(v)
    addr = listen or url_of(free_port())
    kw = {"listen": [addr]}
    if env_listen:
        env["RINGLINE_PROXY_LISTEN"] = addr
        kw = {"listen": [], "probe": [addr]}
    srv = Server(EnvCtx(ctx, env), script=PROXY_LUA, name=name,
                 args=["--workers", str(workers), *args], **kw)
    ctx.servers.append(srv)
    # Ready when it says so: a probe connection would itself make the proxy
    # connect to an upstream (moving round robin on, or marking one down).
    srv.start(ready=False)
    ok = wait_for(lambda: "serving " in srv.stderr() or not srv.alive(), 5 * ctx.factor)
    srv.assert_alive()
    check(ok, f"the proxy did not start serving: {srv.stderr_tail()}")
    return srv


def start_upstream(ctx, script=ECHO_LUA, name=None, port=None, workers=1, env=None):
    listen = [url_of(port)] if port else None
    c = EnvCtx(ctx, env) if env else ctx
    srv = Server(c, script=script, name=name, listen=listen, args=["--workers", str(workers)])
    ctx.servers.append(srv)
    srv.start()
    return srv


def refused_port():
    """A port nothing listens on (connects are refused)."""
    return free_port()


class Blackhole:
    """A listener whose accept queue is full and never drained: further
    connects get no SYN-ACK and time out."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.url = url_of(self.port)
        self.fillers = []
        for _ in range(4):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(s)
        time.sleep(0.05)
        # It must really swallow connects, or the tests using it test nothing.
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", self.port))
            ok = False
        except (socket.timeout, OSError):
            ok = True
        finally:
            probe.close()
        if not ok:
            self.close()
            fail("test setup: could not make a listener whose connects time out "
                 "(accept queue overflow did not drop SYNs)")

    def release(self):
        """Become a normal listener: drop what fills the queue and make it
        long, so the next SYN (a retransmission) is answered."""
        self.lsock.setblocking(False)
        while True:
            try:
                self.lsock.accept()[0].close()
            except OSError:
                break
        for s in self.fillers:
            s.close()
        self.fillers = []
        self.lsock.listen(128)

    def close(self):
        for s in self.fillers:
            s.close()
        self.lsock.close()


class PyUpstream:
    """A TCP server in threads of the test process: handler(sock, self) runs
    in its own thread for every accepted connection.  Handlers record what
    they saw in self.results (a list, appended under self.lock)."""

    def __init__(self, handler, bufsize=None):
        self.handler = handler
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if bufsize:
            # Small kernel buffers (accepted sockets inherit them): the
            # upstream's backlog shows up in the proxy's queues at once.
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.url = url_of(self.port)
        self.lock = threading.Lock()
        self.results = []
        self.errors = []
        self.accepted = 0
        self.stopping = threading.Event()
        self.threads = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self.accepted += 1
            t = threading.Thread(target=self._serve, args=(s,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, s):
        try:
            s.settimeout(30)
            self.handler(s, self)
        except Exception as e:      # noqa: BLE001 - reported by the test
            with self.lock:
                self.errors.append(repr(e))
        finally:
            s.close()

    def record(self, item):
        with self.lock:
            self.results.append(item)

    def close(self):
        self.stopping.set()
        self.thread.join(2)
        self.lsock.close()
        for t in self.threads:
            t.join(2)


def read_all(sock, limit=1 << 30):
    out = bytearray()
    while len(out) < limit:
        b = sock.recv(1 << 16)
        if not b:
            break
        out += b
    return bytes(out)


# --------------------------------------------------------------------------
# Checks

TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def proxy_held_sockets(pid):
    """TCP sockets the process still has open, other than its listeners
    and connects in progress (health checks): (local port, remote port,
    state) from /proc/net/tcp, matched by inode with /proc/PID/fd."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return []
    out = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            p = ln.split()
            if len(p) < 10 or p[9] not in inodes or p[3] in ("0A", "02"):
                continue
            lport = int(p[1].rsplit(":", 1)[1], 16)
            rport = int(p[2].rsplit(":", 1)[1], 16)
            out.append((lport, rport, TCP_STATES.get(p[3], p[3])))
    return out


def check_no_leftovers(ctx, proxy, what="", timeout=3.0):
    """Once every client and upstream is done, the proxy must hold no
    connection: a socket it still has open is a pair it never closed."""
    if not wait_for(lambda: not proxy_held_sockets(proxy.pid), timeout * ctx.factor):
        left = proxy_held_sockets(proxy.pid)
        fail(f"the proxy still has {len(left)} connection(s) open {timeout * ctx.factor:.0f}s "
             f"after every client finished{what}: {left[:8]} (local port, remote port, "
             f"state): it leaked connection pairs")


def ident(sock, timeout=5.0):
    """Read the ident fixture's greeting; returns the upstream's pid."""
    line = recv_line(sock, timeout, what="the upstream's ident line")
    m = RE_IDENT.match(line)
    check(m, f"expected 'ident <pid>' from the upstream, got {line[:80]!r}")
    return int(m.group(1))


def open_ident(addr, timeout=5.0):
    s = connect(addr, timeout)
    try:
        return s, ident(s, timeout)
    except BaseException:
        s.close()
        raise


def close_gracefully(sock, timeout=5.0):
    """SHUT_WR, then wait for the proxy to close its side (the ident/echo
    upstream closes when it sees our FIN)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        data, how = read_until_closed(sock, timeout)
    finally:
        sock.close()
    check(how == "eof" and not data,
          f"after SHUT_WR expected a clean EOF from the proxy, got {how} with {len(data)} bytes")


def stderr_count(srv, needle):
    return srv.stderr().count(needle)


# --------------------------------------------------------------------------
# Flows: echo streams the test can steer (rate limits, kills mid-stream).

class Flow:
    """One connected socket sending `total` bytes of a pattern stream (at
    most `rate` bytes/s when rate is set) and checking the echo in order.
    end: 'done' (all echoed) | 'eof' | 'reset' | 'mismatch' | 'timeout'."""

    def __init__(self, name, sock, stream, total, rng, rate=None, piece=(1, 1 << 18)):
        self.name = name
        self.sock = sock
        self.stream = stream
        self.total = total
        self.rng = rng
        self.rate = rate
        self.piece = piece
        self.sent = self.recvd = 0
        self.end = None
        self.detail = ""
        self.t_end = None
        self.upstream = None        # set by the test (ident pid)

    def allowed(self, elapsed):
        if self.rate is None:
            return self.total
        return min(self.total, int(self.rate * elapsed) + 65536)

    def status(self):
        return f"{self.name}: {self.end} {self.detail}sent {self.sent}/{self.total}, " \
               f"echoed {self.recvd}"


def run_flows(flows, timeout, at=()):
    """Drive the flows until each ends; at: [(seconds, fn)] called once
    that long after the start.  Returns the elapsed time."""
    sel = selectors.DefaultSelector()
    R, W = selectors.EVENT_READ, selectors.EVENT_WRITE
    masks = {}
    for f in flows:
        f.sock.setblocking(False)
        masks[f] = R | W
        sel.register(f.sock, R | W, f)
    buf = bytearray(1 << 18)
    mv = memoryview(buf)
    todo = sorted(at, key=lambda x: x[0])
    live = len(flows)
    t0 = time.monotonic()

    def finish(f, end, detail=""):
        nonlocal live
        if f.end:
            return
        f.end, f.detail, f.t_end = end, detail, time.monotonic() - t0
        live -= 1
        sel.unregister(f.sock)
        f.sock.close()

    try:
        while live:
            el = time.monotonic() - t0
            while todo and todo[0][0] <= el:
                todo.pop(0)[1]()
            if el > timeout:
                for f in flows:
                    finish(f, "timeout", f"after {timeout:.0f}s: ")
                break
            for f in flows:
                if f.end:
                    continue
                m = R | (W if f.sent < f.allowed(el) else 0)
                if m != masks[f]:
                    masks[f] = m
                    sel.modify(f.sock, m, f)
            for key, mask in sel.select(0.01):
                f = key.data
                if f.end:
                    continue
                if mask & R:
                    try:
                        n = f.sock.recv_into(buf)
                    except (BlockingIOError, InterruptedError):
                        n = None
                    except (ConnectionResetError, BrokenPipeError):
                        finish(f, "reset")
                        continue
                    if n == 0:
                        finish(f, "eof")
                        continue
                    if n:
                        if f.recvd + n > f.sent:
                            finish(f, "mismatch", f"{f.recvd + n - f.sent} bytes more than sent; ")
                            continue
                        want = f.stream.get(f.recvd, n)
                        if mv[:n] != want:
                            k = next(j for j in range(n) if buf[j] != want[j])
                            finish(f, "mismatch", f"at offset {f.recvd + k}; ")
                            continue
                        f.recvd += n
                        if f.recvd == f.total:
                            finish(f, "done")
                            continue
                if mask & W:
                    lim = f.allowed(time.monotonic() - t0)
                    n = min(lim - f.sent, log_uniform(f.rng, *f.piece))
                    if n > 0:
                        try:
                            f.sent += f.sock.send(f.stream.get(f.sent, n))
                        except (BlockingIOError, InterruptedError):
                            pass
                        except (ConnectionResetError, BrokenPipeError):
                            finish(f, "reset", "on send; ")
    finally:
        for f in flows:
            if not f.end:
                finish(f, "aborted")
        sel.close()
    return time.monotonic() - t0


# --------------------------------------------------------------------------
# 1. Many concurrent connections

def test_proxy_500_concurrent(ctx):
    """500 concurrent connections through the proxy (2 workers) to two echo
    upstream processes; log-uniform messages up to 4 MiB (several MB per
    connection) written in random pieces; every byte checked in order."""
    ups = [start_upstream(ctx, name=f"echo{i}") for i in range(2)]
    px = start_proxy(ctx, [url_of(u) for u in ups], workers=2)
    pool = make_pool(ctx.rng, size=8 << 20)
    budget = int(320e6 * ctx.volume)
    clients = echo_clients(px.addr, ctx.rng, 500, budget, max_msg=4 << 20, msgs=(1, 5),
                           pool=pool, pause_prob=0.02)
    total = sum(c.send_total for c in clients)
    stats = {}
    t0 = time.monotonic()
    errors = run_clients(clients, 90 * ctx.factor, barrier=True, stats=stats)
    dt = time.monotonic() - t0
    ctx.log(f"{len(clients)} conns (peak {stats['peak_open']} open), {total / 1e6:.0f} MB each "
            f"way in {dt:.1f}s ({2 * total / 1e6 / dt:.0f} MB/s through the proxy)")
    assert_clients_ok(errors, clients)
    check(stats["received"] == total, f"received {stats['received']} of {total} bytes")
    check(stats["peak_open"] == len(clients),
          f"only {stats['peak_open']} of {len(clients)} connections were open at once")
    px.assert_alive()
    check_no_leftovers(ctx, px)
    check("no upstream reachable" not in px.stderr(),
          f"the proxy found no upstream while both were up: {px.stderr_tail()}")


test_proxy_500_concurrent.time_limit = 150


# --------------------------------------------------------------------------
# 2. Balancing

def test_proxy_round_robin(ctx):
    """Round robin (the default): one worker cycles through three upstreams
    in order; with two workers each worker alternates, so two upstreams
    get the same number of connections give or take one per worker."""
    ups = [start_upstream(ctx, IDENT_LUA, name=f"ident{i}") for i in range(3)]
    pids = [u.pid for u in ups]
    # The listen address from RINGLINE_PROXY_LISTEN this time.
    px = start_proxy(ctx, [url_of(u) for u in ups], workers=1, env_listen=True)
    seq = []
    for i in range(30):
        s, pid = open_ident(px.addr)
        try:
            check(pid in pids, f"connection {i}: ident {pid} is none of the upstreams {pids}")
            seq.append(pids.index(pid))
            harness.echo_roundtrip(px.addr, f"rr {i}\n".encode(), sock=s)
        finally:
            s.close()
    check(sorted(seq[:3]) == [0, 1, 2], f"the first three connections did not go to three "
                                         f"different upstreams: {seq[:3]}")
    check(all(seq[i] == seq[i % 3] for i in range(len(seq))),
          f"round robin over 3 upstreams is not a cycle: upstream sequence {seq}")

    # Two workers, two upstreams, 40 concurrent connections.
    px2 = start_proxy(ctx, [url_of(u) for u in ups[:2]], workers=2, name="proxy2")
    socks = []
    counts = {pids[0]: 0, pids[1]: 0}
    try:
        for i in range(40):
            s, pid = open_ident(px2.addr)
            socks.append(s)
            check(pid in counts, f"ident {pid} is not one of the two upstreams {pids[:2]}")
            counts[pid] += 1
        ctx.log(f"2 workers: connections per upstream {list(counts.values())}")
        c0, c1 = counts[pids[0]], counts[pids[1]]
        check(abs(c0 - c1) <= 2, f"round robin with 2 workers: {c0} vs {c1} connections on the "
                                 f"two upstreams (each worker alternates, so at most 2 apart)")
    except BaseException:
        for s in socks:
            s.close()
        raise
    for s in socks:
        close_gracefully(s)
    check_no_leftovers(ctx, px2)


def test_proxy_leastconn(ctx):
    """leastconn: every new connection goes to an upstream with the fewest
    active connections.  Hold connections on one upstream, close those on
    the other: the next ones all go to the emptied upstream."""
    ups = [start_upstream(ctx, IDENT_LUA, name=f"ident{i}") for i in range(2)]
    pids = [u.pid for u in ups]
    px = start_proxy(ctx, [url_of(u) for u in ups], workers=1, balance="leastconn")
    held = {p: [] for p in pids}

    def open_one(what):
        s, pid = open_ident(px.addr)
        check(pid in held, f"ident {pid} is none of the upstreams {pids}")
        active = {p: len(v) for p, v in held.items()}
        lo = min(active.values())
        if active[pid] != lo:
            s.close()
            fail(f"leastconn: {what} went to upstream {pids.index(pid)} with {active[pid]} "
                 f"active connections while the other had {lo} (active: "
                 f"{[active[p] for p in pids]})")
        held[pid].append(s)
        harness.echo_roundtrip(px.addr, b"lc\n", sock=s)
        return pid

    try:
        for i in range(6):
            open_one(f"connection {i}")
        check([len(held[p]) for p in pids] == [3, 3],
              f"6 connections split {[len(held[p]) for p in pids]}, want 3/3")
        # Empty upstream 1; upstream 0 keeps its 3.
        for s in held[pids[1]]:
            close_gracefully(s)
        held[pids[1]] = []
        time.sleep(0.2)     # the proxy counts a pair down when its upstream side closes
        for i in range(3):
            pid = open_one(f"connection {6 + i} (after emptying upstream 1)")
            check(pid == pids[1], f"leastconn: connection {6 + i} went to upstream 0 (3 active) "
                                  f"instead of upstream 1 ({len(held[pids[1]]) - 1} active)")
        # Now 3/3 again: a tie, either will do; then one more each way.
        open_one("connection 9")
        open_one("connection 10")
        check(sorted(len(v) for v in held.values()) == [4, 4],
              f"leastconn split {[len(held[p]) for p in pids]}, want 4/4")
    except BaseException:
        for v in held.values():
            for s in v:
                s.close()
        raise
    for v in held.values():
        for s in v:
            close_gracefully(s)
    check_no_leftovers(ctx, px)


# --------------------------------------------------------------------------
# 3. An upstream killed mid-stream; health check brings it back

def _ident_flows(ctx, px, n, total, pool, rate=None, prefix="flow"):
    flows = []
    for i in range(n):
        s, pid = open_ident(px.addr)
        f = Flow(f"{prefix}{i}", s, PatternStream(pool, ctx.rng.randrange(len(pool))), total,
                 ctx.rng, rate=rate)
        f.upstream = pid
        flows.append(f)
    return flows


def _report(flows, limit=6):
    return "\n  ".join(f.status() for f in flows[:limit]) + (
        f"\n  ... and {len(flows) - limit} more" if len(flows) > limit else "")


def test_proxy_upstream_killed(ctx):
    """SIGKILL one of two upstreams while 24 connections stream through the
    proxy: its clients are closed (EOF or reset, within seconds), the other
    upstream's clients get every byte; new clients are served by the
    survivor without an error.  Restarted on the same port, the killed
    upstream is marked up by the active health check and gets traffic."""
    u1 = start_upstream(ctx, IDENT_LUA, name="ident1")
    u2 = start_upstream(ctx, IDENT_LUA, name="ident2")
    u1_url = url_of(u1)
    # A long down time: only the health check can bring u1 back in time.
    px = start_proxy(ctx, [u1_url, url_of(u2)], workers=2, down_time=60000,
                     check_interval=200, connect_timeout=1000)
    pool = make_pool(ctx.rng)
    rate = 2 * MB * ctx.volume
    total = int(rate * 2.5)
    flows = _ident_flows(ctx, px, 24, total, pool, rate=rate)
    on1 = [f for f in flows if f.upstream == u1.pid]
    on2 = [f for f in flows if f.upstream == u2.pid]
    check(on1 and on2 and len(on1) + len(on2) == len(flows),
          f"flows per upstream: {len(on1)} on u1, {len(on2)} on u2, "
          f"{len(flows) - len(on1) - len(on2)} elsewhere")
    killed_at = []

    def kill_u1():
        u1.send_signal(signal.SIGKILL)
        u1.checked = True           # died on purpose: not a teardown failure
        killed_at.append(time.monotonic())

    run_flows(flows, 30 * ctx.factor, at=[(0.8, kill_u1)])
    u1.wait(5)
    t_kill = killed_at[0]
    bad2 = [f for f in on2 if f.end != "done"]
    check(not bad2, f"{len(bad2)} of {len(on2)} flows on the surviving upstream were "
                    f"disturbed by the other's death:\n  {_report(bad2)}")
    bad1 = [f for f in on1 if f.end not in ("eof", "reset")]
    check(not bad1, f"{len(bad1)} of {len(on1)} flows on the killed upstream did not end with "
                    f"EOF or reset:\n  {_report(bad1)}")
    slow = [f for f in on1 if f.t_end is not None and f.t_end > 0.8 + 5 * ctx.factor]
    check(not slow, f"flows on the killed upstream took more than 5 s to be closed:\n  "
                    f"{_report(slow)}")
    ctx.log(f"u1 flows ended: {sorted(set(f.end for f in on1))}, "
            f"max {max(f.t_end for f in on1) - 0.8:.2f}s after the kill")
    px.assert_alive()

    # New clients go to the survivor; none sees an error.
    fresh = _ident_flows(ctx, px, 12, 256 << 10, pool, prefix="fresh")
    wrong = [f.upstream for f in fresh if f.upstream != u2.pid]
    check(not wrong, f"new clients were answered by {wrong}, not the surviving upstream "
                     f"{u2.pid}, after u1 ({u1.pid}) was killed")
    run_flows(fresh, 20 * ctx.factor)
    bad = [f for f in fresh if f.end != "done"]
    check(not bad, f"new clients after the kill failed:\n  {_report(bad)}")
    down_line = f"upstream {u1_url} down for 60000 ms"
    check(wait_for(lambda: down_line in px.stderr(), 2 * ctx.factor),
          f"no '{down_line}: ...' in the proxy log after u1 was killed: {px.stderr_tail()}")
    ctx.log(f"down lines: {stderr_count(px, down_line)}")

    # Restart u1 on the same port: the health check finds it.
    up_line = f"upstream {u1_url} is up"
    ups_before = stderr_count(px, up_line)
    u1b = start_upstream(ctx, IDENT_LUA, name="ident1-restarted", port=u1.port)
    t_restart = time.monotonic()
    check(wait_for(lambda: stderr_count(px, up_line) > ups_before, 5 * ctx.factor),
          f"no '{up_line}' in the proxy log {5 * ctx.factor:.0f}s after u1 came back "
          f"(health check every 200 ms): {px.stderr_tail()}")
    # Each worker keeps its own view and health check: wait until every
    # worker that marked u1 down (one log line each) has marked it up.
    downs = stderr_count(px, down_line)
    check(wait_for(lambda: stderr_count(px, up_line) - ups_before >= downs, 2 * ctx.factor),
          f"only {stderr_count(px, up_line) - ups_before} of the {downs} worker(s) that marked "
          f"u1 down marked it up again: {px.stderr_tail()}")
    ctx.log(f"u1 marked up {time.monotonic() - t_restart:.2f}s after the restart "
            f"({time.monotonic() - t_kill:.1f}s after the kill)")
    again = _ident_flows(ctx, px, 20, 256 << 10, pool, prefix="again")
    n1 = sum(1 for f in again if f.upstream == u1b.pid)
    check(n1 >= 8, f"after the health check marked u1 up, only {n1} of 20 new connections went "
                   f"to it (round robin over 2 upstreams, 2 workers: want >= 8)")
    run_flows(again, 20 * ctx.factor)
    bad = [f for f in again if f.end != "done"]
    check(not bad, f"clients after u1's return failed:\n  {_report(bad)}")
    px.assert_alive()
    check_no_leftovers(ctx, px)


test_proxy_upstream_killed.time_limit = 90


# --------------------------------------------------------------------------
# 4. Refused and timed-out upstreams among good ones

def test_proxy_refused_upstream_skipped(ctx):
    """Two refusing upstreams among two echo upstreams (a short down time,
    so they are tried again and again): 120 clients arriving over a second,
    some sending before the upstream connect completes, some half-closing
    at once, all served with no error."""
    ups = [start_upstream(ctx, name=f"echo{i}") for i in range(2)]
    dead = [refused_port(), refused_port()]
    order = [url_of(dead[0]), url_of(ups[0]), url_of(dead[1]), url_of(ups[1])]
    px = start_proxy(ctx, order, workers=2, down_time=50)
    pool = make_pool(ctx.rng)
    clients = echo_clients(px.addr, ctx.rng, 80, int(40e6 * ctx.volume), max_msg=2 << 20,
                           pool=pool, prefix="plain")
    clients += echo_clients(px.addr, ctx.rng, 40, int(10e6 * ctx.volume), max_msg=1 << 20,
                            pool=pool, prefix="shutwr", shut_wr=True, end="eof",
                            lockstep_ratio=0.0)
    for c in clients:
        c.start_delay = ctx.rng.uniform(0, 1.0)
    errors = run_clients(clients, 60 * ctx.factor)
    assert_clients_ok(errors, clients)
    log = px.stderr()
    for p in dead:
        line = f"upstream {url_of(p)} down for 50 ms: Connection refused"
        check(line in log, f"no '{line}' in the proxy log: {px.stderr_tail()}")
    check("no upstream reachable" not in log,
          f"a client was refused although two upstreams were up: {px.stderr_tail()}")
    ctx.log(f"refused-connect log lines: {log.count('Connection refused')}")
    check_no_leftovers(ctx, px)


def test_proxy_timed_out_upstream_skipped(ctx):
    """An upstream whose connects time out comes first: the client's bytes
    (2 MiB, more than the proxy buffers while connecting) wait, then go to
    the next upstream after the connect timeout; the client sees no error."""
    bh = Blackhole()
    try:
        up = start_upstream(ctx, name="echo")
        px = start_proxy(ctx, [bh.url, url_of(up)], workers=1, connect_timeout=300)
        pool = make_pool(ctx.rng)
        payload = bytes(pool[:2 * MB])
        s = connect(px.addr, 10)
        try:
            t0 = time.monotonic()
            sender = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
            sender.start()
            got = recv_exact(s, len(payload), 10 * ctx.factor, what="the echo")
            dt = time.monotonic() - t0
            sender.join(5)
            check(got == payload, "the echo after a timed-out first upstream differs")
            check(dt >= 0.25, f"echo after {dt:.3f}s: the timed-out upstream was not tried first?")
            ctx.log(f"served after {dt:.2f}s (connect timeout 0.3 s)")
        finally:
            s.close()
        line = f"upstream {bh.url} down for 5000 ms: Connection timed out"
        check(line in px.stderr(), f"no '{line}' in the proxy log: {px.stderr_tail()}")
        # Marked down: the next client goes straight to the good one.
        t0 = time.monotonic()
        harness.echo_roundtrip(px.addr, b"second\n")
        dt = time.monotonic() - t0
        check(dt < 0.25, f"second client took {dt:.2f}s: the timed-out upstream was tried "
                         f"again although marked down")
        check_no_leftovers(ctx, px)
    finally:
        bh.close()


def _echo_on(lsock, stop):
    """Accept on lsock until stop is set; echo each connection until its
    EOF, then close it."""
    def echo(c):
        try:
            c.settimeout(30)
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                c.sendall(b)
        except OSError:
            pass
        finally:
            c.close()

    lsock.settimeout(0.05)
    while not stop.is_set():
        try:
            c, _ = lsock.accept()
        except socket.timeout:
            continue
        except OSError:
            break
        threading.Thread(target=echo, args=(c,), daemon=True).start()


def test_proxy_request_before_upstream_accepts(ctx):
    """Clients that send their request right after connecting and then only
    wait for the reply, sending nothing more, while the proxy's connect to
    the upstream is still pending (its accept queue is full until the
    proxy's SYN retransmission, about 1 s later): every request reaches the
    upstream once the connect completes and every reply comes back; a
    client that half-closed right after its request gets the reply, then
    EOF.  Then with a refusing upstream first: the request goes to the next
    one, for 30 clients in a row."""
    bh = Blackhole()
    stop = threading.Event()
    th = None
    try:
        px = start_proxy(ctx, [bh.url], workers=1, connect_timeout=int(5000 * ctx.factor),
                         check_interval=0)
        reqs = [b"GET /first\n", bytes(range(256)) * 256 + b"\n"]
        socks = []
        try:
            for r in reqs:
                s = connect(px.addr, 10)
                socks.append(s)
                s.sendall(r)
            shut = connect(px.addr, 10)
            socks.append(shut)
            shut.sendall(b"and goodbye\n")
            shut.shutdown(socket.SHUT_WR)
            t0 = time.monotonic()
            time.sleep(0.3)
            bh.release()
            th = threading.Thread(target=_echo_on, args=(bh.lsock, stop), daemon=True)
            th.start()
            for i, (s, r) in enumerate(zip(socks, reqs)):
                got = recv_exact(s, len(r), 5 * ctx.factor,
                                 what=f"the reply to request {i} sent before the upstream "
                                      f"accepted (nothing sent since)")
                check(got == r, f"request {i}: the reply differs from the request")
            got, how = read_until_closed(shut, 5 * ctx.factor)
            check(got == b"and goodbye\n" and how == "eof",
                  f"request then half-close before the upstream accepted: expected the reply "
                  f"then EOF, got {got!r} ({how})")
            ctx.log(f"replies {time.monotonic() - t0:.2f}s after the requests")
        finally:
            for s in socks:
                s.close()
        px.assert_alive()
        check_no_leftovers(ctx, px)
    finally:
        stop.set()
        if th:
            th.join(2)
        bh.close()

    up = start_upstream(ctx, name="echo")
    px2 = start_proxy(ctx, [url_of(refused_port()), url_of(up)], workers=1, name="proxy2",
                      down_time=0)
    for i in range(30):
        req = f"request {i} ".encode() * (1 + i * 97) + b"\n"
        s = connect(px2.addr, 10)
        try:
            s.sendall(req)
            if i % 2:
                s.shutdown(socket.SHUT_WR)
                got, how = read_until_closed(s, 5 * ctx.factor)
                check(got == req and how == "eof",
                      f"client {i} (request, half-close, refused first upstream): got "
                      f"{len(got)} of {len(req)} bytes{' (different)' if got != req[:len(got)] else ''}"
                      f", then {how}")
            else:
                got = recv_exact(s, len(req), 5 * ctx.factor,
                                 what=f"client {i}'s reply after a refused first upstream")
                check(got == req, f"client {i}: the reply differs from the request")
        finally:
            s.close()
    check("Connection refused" in px2.stderr(),
          f"the refusing upstream was never tried: {px2.stderr_tail()}")
    check_no_leftovers(ctx, px2)


# --------------------------------------------------------------------------
# 5. Nothing reachable

def test_proxy_no_upstream_reachable(ctx):
    """Two refusing upstreams and one that never answers (connect timeout
    400 ms): clients are closed (EOF or reset, no bytes) within about the
    connect timeout, the proxy keeps running and says 'no upstream
    reachable'.  When an upstream comes back on a dead port, clients are
    served again within a few health-check intervals."""
    bh = Blackhole()
    try:
        dead = [refused_port(), refused_port()]
        px = start_proxy(ctx, [url_of(dead[0]), bh.url, url_of(dead[1])], workers=2,
                         connect_timeout=400, check_interval=200)
        for round_ in range(2):
            socks = [connect(px.addr) for _ in range(20)]
            t0 = time.monotonic()
            results = []
            try:
                for i, s in enumerate(socks):
                    try:
                        s.sendall(b"hello? " * (i * 1000 + 1))
                    except OSError:
                        pass
                for s in socks:
                    left = max(0.1, t0 + 0.4 + 3.0 * ctx.factor - time.monotonic())
                    data, how = read_until_closed(s, left)
                    results.append((how, len(data), round(time.monotonic() - t0, 2)))
            finally:
                for s in socks:
                    s.close()
            bad = [r for r in results if r[0] == "timeout" or r[1]]
            check(not bad, f"round {round_}: {len(bad)} of {len(socks)} clients were not closed "
                           f"cleanly within {0.4 + 3.0 * ctx.factor:.1f}s (how, bytes, seconds): "
                           f"{bad[:5]}")
            ctx.log(f"round {round_}: closed by {sorted(set(r[0] for r in results))} within "
                    f"{max(r[2] for r in results):.2f}s")
            px.assert_alive()
        check(wait_for(lambda: "no upstream reachable, closing" in px.stderr(), 2),
              f"no 'no upstream reachable' in the proxy log: {px.stderr_tail()}")
        check(f"upstream {bh.url} down for" in px.stderr(),
              f"the timed-out upstream was not marked down: {px.stderr_tail()}")
        # An upstream appears on a dead port: clients are served again once
        # the proxy notices (at once, or by a health check).
        up = start_upstream(ctx, name="echo-late", port=dead[1])
        t0 = time.monotonic()

        def served():
            try:
                harness.echo_roundtrip(px.addr, b"late\n", timeout=2 * ctx.factor)
                return True
            except (TestFailure, OSError):
                return False

        check(wait_for(served, 3 * ctx.factor, interval=0.1),
              f"clients not served {3 * ctx.factor:.0f}s after an upstream came back "
              f"(health check every 200 ms): {px.stderr_tail()}")
        ctx.log(f"served again {time.monotonic() - t0:.2f}s after the upstream came back")
        for i in range(4):
            harness.echo_roundtrip(px.addr, f"late {i}\n".encode(), timeout=5 * ctx.factor)
        check_no_leftovers(ctx, px)
        up.assert_alive()
    finally:
        bh.close()


def test_proxy_retry_from_on_close(ctx):
    """The proxy's failover path in isolation
    (tests/fixtures/proxy/connect_in_close.lua): 8 outbound connects are
    refused in the same batch and each on_close connects again, as
    proxy.lua does to try the next upstream.  Every connect must get its
    on_close; a lost one leaves a proxy client waiting forever."""
    dead = url_of(refused_port())
    srv = start_upstream(ctx, "tests/fixtures/proxy/connect_in_close.lua", name="retry",
                         env={"RL_TEST_DEAD": dead, "RL_TEST_N": "8"})
    line = wait_for(lambda: re.search(r"connect_in_close: connects (\d+), on_close calls (\d+); "
                                      r"no on_close: (.*)", srv.stderr()), 5 * ctx.factor)
    check(line, f"no summary line from the fixture: {srv.stderr_tail()}")
    made, closed, lost = int(line.group(1)), int(line.group(2)), line.group(3)
    check(made == 16 and closed == 16,
          f"{made} connects but {closed} on_close calls (no on_close for: {lost}): an "
          f"outbound connection's CLOSE event is lost when a handler earlier in the same "
          f"batch reuses its slot (ringline.connect from on_close)")


def test_proxy_client_gone_during_connect(ctx):
    """A client that resets while its upstream connect is still in flight
    says nothing about the upstream: when that connect then succeeds, the
    upstream must not be marked down."""
    bh = Blackhole()
    try:
        px = start_proxy(ctx, [bh.url], workers=1, connect_timeout=4000, check_interval=0)
        s = connect(px.addr)
        time.sleep(0.1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()                       # RST: the client is gone
        time.sleep(0.1)
        bh.release()                    # the proxy's SYN retransmission (~1 s) is answered
        # The connect completes about 1 s after the first SYN.
        time.sleep(1.6)
        check(px.alive(), "proxy died")
        down = [ln for ln in px.stderr().splitlines() if f"upstream {bh.url} down" in ln]
        check(not down, f"a healthy upstream was marked down because a client left during "
                        f"the connect: {down[0].split(' warn: ')[-1] if down else ''}")
        check_no_leftovers(ctx, px)
    finally:
        bh.close()


# --------------------------------------------------------------------------
# 6. Half-close

def test_proxy_client_half_close(ctx):
    """Clients send N bytes (0 .. 3 MiB) then shutdown(SHUT_WR): each gets
    all N bytes back, then EOF.  And a client that half-closes first and
    then gets a reply the upstream sends only after seeing its EOF."""
    ups = [start_upstream(ctx, name=f"echo{i}") for i in range(2)]
    px = start_proxy(ctx, [url_of(u) for u in ups], workers=2)
    pool = make_pool(ctx.rng)
    clients = []
    for i, size in enumerate([0, 1, 2, 100, 4096, 16385, 100_000, 1 << 20, 3 << 20] * 3):
        off = ctx.rng.randrange(0, len(pool) - size + 1)
        clients.append(StreamClient(f"hc{i}({size} B)", px.addr, [pool[off:off + size]],
                                    rng=ctx.rng, shut_wr=True, end="eof"))
    errors = run_clients(clients, 30 * ctx.factor)
    assert_clients_ok(errors, clients, "half-closing clients")

    def reverser(s, srv):
        data = read_all(s)                  # until the client's FIN
        s.sendall(data[::-1])
        srv.record(len(data))

    py = PyUpstream(reverser)
    try:
        px2 = start_proxy(ctx, [py.url], workers=1, name="proxy2")
        for size in (1, 70_000, 3 << 20):
            data = bytes(pool[:size])
            s = connect(px2.addr, 10)
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                got, how = read_until_closed(s, 10 * ctx.factor)
            finally:
                s.close()
            check(how == "eof", f"{size} B: expected EOF after the reply, got {how} after "
                                f"{len(got)} bytes")
            check(got == data[::-1], f"{size} B: the reply sent after the client's half-close "
                                     f"differs ({len(got)} bytes, want {size})")
        check(not py.errors, f"python upstream errors: {py.errors}")
        check_no_leftovers(ctx, px2)
    finally:
        py.close()
    check_no_leftovers(ctx, px)


def test_proxy_upstream_half_close(ctx):
    """An upstream that sends a greeting and then shuts down its write side:
    the client sees the greeting, then EOF, and can still send (4 MiB) to
    the upstream, which gets every byte; the pair closes when the client
    half-closes too."""
    GREETING = b"220 greetings from upstream, I will only listen now\r\n"

    def greeter(s, srv):
        s.sendall(GREETING)
        s.shutdown(socket.SHUT_WR)
        data = read_all(s)
        srv.record(data)

    py = PyUpstream(greeter)
    try:
        px = start_proxy(ctx, [py.url], workers=2)
        pool = make_pool(ctx.rng, size=4 << 20)
        for size in (0, 5, 1 << 16, 4 << 20):
            payload = bytes(pool[len(pool) - size:]) if size else b""
            n0 = len(py.results)
            s = connect(px.addr, 10)
            try:
                got = recv_exact(s, len(GREETING), 5 * ctx.factor, what="the greeting")
                check(got == GREETING, f"greeting differs: {got!r}")
                s.settimeout(5 * ctx.factor)
                try:
                    rest = s.recv(100)
                except socket.timeout:
                    fail("no EOF after the greeting: the upstream's half-close was not "
                         "passed on to the client")
                check(rest == b"", f"expected EOF after the greeting, got {rest[:40]!r}")
                # Our direction is still open.
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                check(wait_for(lambda: len(py.results) > n0, 10 * ctx.factor),
                      f"{size} B: the upstream never saw the client's EOF after the data "
                      f"(errors: {py.errors})")
                data = py.results[-1]
                check(data == payload, f"{size} B sent after the upstream's half-close: the "
                                       f"upstream got {len(data)} bytes"
                                       f"{' (different bytes)' if len(data) == size else ''}")
            finally:
                s.close()
        check(not py.errors, f"python upstream errors: {py.errors}")
        check_no_leftovers(ctx, px)
    finally:
        py.close()


# --------------------------------------------------------------------------
# 7. Backpressure against a slow reader

def test_proxy_slow_reader_bounded_memory(ctx):
    """A client sends 200 MB through the proxy to an echo upstream but reads
    its echo slowly (first not at all, then ~6 MB/s, then at full speed):
    the proxy's RSS stays within 64 MB of its warmed-up size (backpressure
    pauses each side while the other is backed up) and every byte comes
    back in order."""
    up = start_upstream(ctx, name="echo")
    env = None
    if ctx.asan:
        # ASan keeps freed memory in a quarantine (256 MB by default): RSS
        # would follow the bytes allocated, not the bytes held.
        env = {"ASAN_OPTIONS": ctx.server_env().get("ASAN_OPTIONS", "") + ":quarantine_size_mb=16"}
    px = start_proxy(ctx, [url_of(up)], workers=1, env=env)
    pool = make_pool(ctx.rng)
    warm = echo_clients(px.addr, ctx.rng, 20, 20 * MB, pool=pool, prefix="warm")
    assert_clients_ok(run_clients(warm, 30 * ctx.factor), warm, "warm-up clients")
    time.sleep(0.3)
    rss0, hwm0 = px.mem_kb()
    total = int(200e6 * ctx.volume)
    stream = PatternStream(pool, ctx.rng.randrange(len(pool)))
    s = connect(px.addr, 10)
    s.setblocking(False)
    sent = recvd = 0
    buf = bytearray(1 << 18)
    mv = memoryview(buf)
    samples = []
    phase_sent = {}

    def sample(tag):
        samples.append((tag, *px.mem_kb()))

    def pump_send():
        nonlocal sent
        progressed = False
        for _ in range(16):
            if sent >= total:
                break
            try:
                k = s.send(stream.get(sent, min(1 << 17, total - sent)))
            except BlockingIOError:
                break
            sent += k
            progressed = True
        return progressed

    def pump_recv(limit):
        nonlocal recvd
        n = 0
        while n < limit:
            try:
                k = s.recv_into(buf, min(len(buf), limit - n))
            except BlockingIOError:
                break
            if k == 0:
                fail(f"EOF from the proxy after {recvd} of {sent} echoed bytes")
            want = stream.get(recvd, k)
            if mv[:k] != want:
                j = next(i for i in range(k) if buf[i] != want[i])
                fail(f"echo mismatch at offset {recvd + j}")
            recvd += k
            n += k
        return n

    try:
        # A: send, never read, until no progress for a second.
        last = time.monotonic()
        deadline = last + 30 * ctx.factor
        while time.monotonic() - last < 1.0 and time.monotonic() < deadline and sent < total:
            if pump_send():
                last = time.monotonic()
            else:
                time.sleep(0.01)
        phase_sent["stall"] = sent
        sample("stalled")
        check(sent < total, f"the proxy took all {total} bytes from a client that never read: "
                            f"no backpressure")
        # B: read slowly, 64 KiB per 10 ms, for 3 seconds; keep sending.
        t_end = time.monotonic() + 3.0
        t_sample = 0
        while time.monotonic() < t_end:
            pump_send()
            pump_recv(64 << 10)
            if time.monotonic() - t_sample > 0.2:
                sample("slow")
                t_sample = time.monotonic()
            time.sleep(0.01)
        phase_sent["slow"] = sent
        # C: full speed until everything is back.
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        deadline = time.monotonic() + 60 * ctx.factor
        try:
            while recvd < total:
                if time.monotonic() > deadline:
                    fail(f"timed out at full speed: sent {sent}, echoed {recvd} of {total}")
                want_w = sent < total
                sel.modify(s, selectors.EVENT_READ | (selectors.EVENT_WRITE if want_w else 0))
                sel.select(0.2)
                pump_send()
                pump_recv(8 << 20)
                if time.monotonic() - t_sample > 0.2:
                    sample("fast")
                    t_sample = time.monotonic()
        finally:
            sel.close()
    finally:
        s.close()
    sample("end")
    peak_rss = max(x[1] for x in samples)
    peak_hwm = max(x[2] for x in samples)
    growth = peak_rss - rss0
    hwm_growth = peak_hwm - max(hwm0, rss0)
    phases = {}
    for tag, rss, _ in samples:
        phases[tag] = max(phases.get(tag, 0), rss)
    ctx.log("peak RSS per phase (MB): " + ", ".join(f"{k} {v // 1024}" for k, v in phases.items()))
    ctx.log(f"sent {phase_sent['stall'] / MB:.1f} MB before stalling, "
            f"{phase_sent['slow'] / MB:.1f} MB after the slow phase; RSS {rss0 // 1024} MB -> "
            f"peak {peak_rss // 1024} MB, HWM {hwm0 // 1024} -> {peak_hwm // 1024} MB")
    check(growth < 64 * 1024, f"proxy RSS grew by {growth // 1024} MB (>= 64 MB) for a slow "
                              f"reader: backpressure does not bound the buffers")
    check(hwm_growth < 64 * 1024, f"proxy peak RSS (VmHWM) grew by {hwm_growth // 1024} MB")
    check(recvd == total, f"echoed {recvd} of {total}")
    px.assert_alive()
    check_no_leftovers(ctx, px)


test_proxy_slow_reader_bounded_memory.time_limit = 120


def _pipelined_echo(ctx, addr, pool, total, quiet_s, stall_s=3.0, piece=1 << 18):
    """One client pushes total bytes (a thread, blocking sendall) and reads
    nothing for quiet_s, then reads the echo at full speed.  Returns None,
    or what went wrong (a stall: no byte for stall_s)."""
    stream = PatternStream(pool, ctx.rng.randrange(len(pool)))
    s = connect(addr, 10)
    s.settimeout(None)
    sent = [0]

    def sender():
        try:
            while sent[0] < total:
                n = min(piece, total - sent[0])
                s.sendall(stream.get(sent[0], n))
                sent[0] += n
        except OSError:
            pass

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    got = 0
    try:
        time.sleep(quiet_s)
        last = time.monotonic()
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ)
        try:
            while got < total:
                if time.monotonic() - last > stall_s:
                    return (f"stalled: {got} of {total} bytes echoed, {sent[0]} sent, nothing "
                            f"for {stall_s:.0f}s")
                if not sel.select(0.2):
                    continue
                n = s.recv_into(buf)
                if n == 0:
                    return f"EOF after {got} of {total} bytes"
                want = stream.get(got, n)
                if mv[:n] != want:
                    k = next(j for j in range(n) if buf[j] != want[j])
                    return f"echo mismatch at offset {got + k}"
                got += n
                last = time.monotonic()
        finally:
            sel.close()
    finally:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        t.join(5)
        s.close()
    return None


def _blocking_echo(s, srv):
    """The simplest echo server: read, then write it all back (blocking),
    so it stops reading while its writes are not taken."""
    s.settimeout(60)
    while True:
        data = s.recv(1 << 16)
        if not data:
            break
        s.sendall(data)


def test_proxy_pipelining_blocking_upstream(ctx):
    """A client streams 16 MB through the proxy to a plain blocking echo
    server (read, then sendall: it stops reading while its replies are not
    taken) and reads the echo.  The proxy's upstream side must keep reading
    replies while its own queue towards the upstream is full (the client
    side is what must wait); otherwise proxy and upstream wait for each
    other forever."""
    py = PyUpstream(_blocking_echo, bufsize=64 << 10)
    try:
        px = start_proxy(ctx, [py.url], workers=1)
        pool = make_pool(ctx.rng)
        # Reading at full speed from the start, and after a quiet second.
        for r, quiet in enumerate((0.0, 1.0, 0.0)):
            err = _pipelined_echo(ctx, px.addr, pool, int(16 * MB * ctx.volume), quiet)
            check(err is None, f"round {r} (client quiet for {quiet:.0f}s first): {err}; "
                               f"with a blocking echo upstream")
        check(not py.errors, f"python upstream errors: {py.errors}")
    finally:
        py.close()


def test_proxy_pipelining_client(ctx):
    """A client writes 48 MB without reading for a second, then reads: with
    the proxy's queues full both ways, reads must resume when the client
    reads.  The echo upstream (ringline) stops reading while its replies
    are not taken, like many servers: the proxy's upstream connection must
    keep reading replies while its own requests queue up, or the two wait
    for each other forever.  Eight rounds (the stall is timing-dependent)."""
    up = start_upstream(ctx, name="echo")
    px = start_proxy(ctx, [url_of(up)], workers=1)
    pool = make_pool(ctx.rng)
    total = int(48 * MB * ctx.volume)
    for r in range(8):
        t0 = time.monotonic()
        err = _pipelined_echo(ctx, px.addr, pool, total, 1.0)
        if err:
            srv_q, _ = harness.proc_net_tcp_queues(up.port)
            fail(f"round {r}: {err}; the echo upstream's sockets (send-q, recv-q): {srv_q}\n"
                 f"    proxy {px.stderr_tail()}\n    upstream {up.stderr_tail()}")
        ctx.log(f"round {r}: {total / MB:.0f} MB in {time.monotonic() - t0:.1f}s")
    check_no_leftovers(ctx, px)


test_proxy_pipelining_client.time_limit = 90


def test_proxy_high_water_option(ctx):
    """proxy.lua with --high-water 4m --low-water 1m: the same pipelining
    client must not stall (the proxy pauses one side when the other has
    more than its own 1 MiB queued, and relies on a drain event that only
    comes after the core's --high-water was passed)."""
    up = start_upstream(ctx, name="echo")
    px = start_proxy(ctx, [url_of(up)], workers=1, args=["--high-water", "4m",
                                                          "--low-water", "1m"])
    pool = make_pool(ctx.rng)
    err = _pipelined_echo(ctx, px.addr, pool, int(32 * MB * ctx.volume), 1.0)
    check(err is None, f"proxy with --high-water 4m: {err}")


# --------------------------------------------------------------------------
# 8. Idle timeout

def test_proxy_idle_timeout(ctx):
    """RINGLINE_PROXY_IDLE_TIMEOUT=300: a client that goes quiet is closed
    about 0.3 s after its last byte; one that keeps talking (a byte every
    100 ms for 1.2 s) is not; the upstream side of a closed pair is closed
    too."""
    up = start_upstream(ctx, name="echo")
    px = start_proxy(ctx, [url_of(up)], workers=1, idle_timeout=300)
    s = connect(px.addr, 5)
    try:
        harness.echo_roundtrip(px.addr, b"hi\n", sock=s)
        t0 = time.monotonic()
        data, how = read_until_closed(s, 5 * ctx.factor)
        dt = time.monotonic() - t0
    finally:
        s.close()
    check(how in ("eof", "reset") and not data, f"idle client: {how} with {len(data)} bytes")
    check(0.25 <= dt <= 0.3 + 1.0 * ctx.factor,
          f"idle client closed {dt:.3f}s after its last byte, want about 0.3 s")
    ctx.log(f"idle client closed ({how}) after {dt:.3f}s")

    s = connect(px.addr, 5)
    try:
        t0 = time.monotonic()
        for i in range(12):
            harness.echo_roundtrip(px.addr, bytes([65 + i]), sock=s)
            time.sleep(0.1)
        check(time.monotonic() - t0 > 1.1, "test timing")
        t1 = time.monotonic()
        data, how = read_until_closed(s, 5 * ctx.factor)
        dt = time.monotonic() - t1
    finally:
        s.close()
    check(how in ("eof", "reset") and not data and dt <= 0.3 + 1.0 * ctx.factor,
          f"talkative client, once quiet: {how} after {dt:.2f}s with {len(data)} bytes")
    check_no_leftovers(ctx, px)


def test_proxy_idle_timeout_spares_downloads(ctx):
    """A connection that only receives (the upstream sends 4 KiB every
    50 ms for 1.5 s after one request byte) is not idle: the 300 ms idle
    timeout must not cut it; it gets everything, then the upstream's EOF."""
    CHUNK, N = 4096, 30

    def ticker(s, srv):
        s.recv(1)
        for i in range(N):
            s.sendall(bytes([i & 0xFF]) * CHUNK)
            time.sleep(0.05)
        s.shutdown(socket.SHUT_WR)
        read_all(s)

    py = PyUpstream(ticker)
    try:
        px = start_proxy(ctx, [py.url], workers=1, idle_timeout=300)
        s = connect(px.addr, 5)
        try:
            s.sendall(b"?")
            t0 = time.monotonic()
            data, how = read_until_closed(s, 10 * ctx.factor)
            dt = time.monotonic() - t0
        finally:
            s.close()
        want = b"".join(bytes([i & 0xFF]) * CHUNK for i in range(N))
        check(data == want and how == "eof",
              f"a client receiving a steady download (4 KiB / 50 ms) was cut after {dt:.2f}s "
              f"({how}, {len(data)} of {len(want)} bytes) by the 300 ms idle timeout: the proxy "
              f"counts only bytes from the client as activity")
    finally:
        py.close()


# --------------------------------------------------------------------------
# Real protocols: redis, HTTP

def _need(ctx, *tools, pkg):
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        ctx.note(f"SKIPPED: {', '.join(missing)} not installed (apt-get install {pkg})")
        return False
    return True


def _start_redis(ctx):
    port = free_port()
    log = open(os.path.join(ctx.tmpdir, "redis.log"), "wb")
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", ctx.tmpdir],
                         cwd=ctx.tmpdir, stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, preexec_fn=harness._set_pdeathsig)
    harness.ALL_PROCS.append(p)

    def ready():
        try:
            s = connect((socket.AF_INET, ("127.0.0.1", port)), 0.5)
        except OSError:
            return False
        try:
            s.sendall(b"PING\r\n")
            return recv_line(s, 2) == b"+PONG\r\n"
        except Exception:       # noqa: BLE001 - loading, retry
            return False
        finally:
            s.close()

    if not wait_for(ready, 10):
        p.kill()
        log.close()
        fail(f"redis-server did not start on port {port}")
    return p, port, log


def _cli(port, *args, stdin=None):
    p = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], input=stdin,
                       capture_output=True, timeout=30)
    check(p.returncode == 0, f"redis-cli {' '.join(args[:3])} exited {p.returncode}: "
                             f"{p.stderr[-300:]!r}")
    return p.stdout


def test_proxy_redis(ctx):
    """redis-server behind the proxy: redis-cli commands (small values and
    a 1 MiB one), a pipelined MULTI/EXEC, and a short redis-benchmark run
    with pipelining through the proxy."""
    if not _need(ctx, "redis-server", "redis-cli", pkg="redis-server redis-tools"):
        return
    p, rport, log = _start_redis(ctx)
    try:
        px = start_proxy(ctx, [url_of(rport)], workers=2)
        pp = px.port
        check(_cli(pp, "PING") == b"PONG\n", "PING through the proxy")
        check(_cli(pp, "SET", "greeting", "hello proxy") == b"OK\n", "SET")
        check(_cli(pp, "GET", "greeting") == b"hello proxy\n", "GET")
        check(_cli(rport, "GET", "greeting") == b"hello proxy\n", "GET direct after SET via proxy")
        check(_cli(pp, "INCRBY", "n", "41") == b"41\n", "INCRBY")
        big = os.urandom(MB // 2).hex().encode()        # 1 MiB of hex
        check(_cli(pp, "-x", "SET", "big", stdin=big) == b"OK\n", "SET 1 MiB value")
        check(_cli(pp, "STRLEN", "big") == b"%d\n" % len(big), "STRLEN")
        check(_cli(pp, "GET", "big") == big + b"\n", "GET of the 1 MiB value differs")
        # Many commands on one connection, pipelined.
        cmds = b"".join(b"RPUSH l %d\n" % i for i in range(2000)) + b"LLEN l\n"
        out = _cli(pp, stdin=cmds).split(b"\n")
        check(out[-2] == b"2000", f"LLEN after 2000 pipelined RPUSH: {out[-2:]!r}")
        if shutil.which("redis-benchmark"):
            b = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(pp), "-c", "20",
                                "-n", str(int(20000 * ctx.volume)), "-P", "16", "-t", "set,get",
                                "-q"], capture_output=True, timeout=60 * ctx.factor)
            text = b.stdout.decode(errors="replace")
            ctx.log("redis-benchmark: " + " | ".join(
                ln.strip().split("\r")[-1] for ln in text.splitlines() if "per second" in ln))
            check(b.returncode == 0 and "SET:" in text and "GET:" in text,
                  f"redis-benchmark through the proxy failed ({b.returncode}): {text[-300:]!r} "
                  f"{b.stderr[-300:]!r}")
        else:
            ctx.note("redis-benchmark not installed: its part skipped")
        check(p.poll() is None, "redis-server died")
        px.assert_alive()
        check_no_leftovers(ctx, px)
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()


def test_proxy_http_curl(ctx):
    """scripts/http.lua behind the proxy, with curl: GET, a 1 MiB POST
    echo, a static file, and keep-alive (several requests, one
    connection)."""
    if not _need(ctx, "curl", pkg="curl"):
        return
    root = os.path.join(ctx.tmpdir, "root")
    os.makedirs(root)
    blob = os.urandom(300_000)
    with open(os.path.join(root, "blob.bin"), "wb") as f:
        f.write(blob)
    body = os.urandom(MB)
    body_path = os.path.join(ctx.tmpdir, "body.bin")
    with open(body_path, "wb") as f:
        f.write(body)
    ups = [start_upstream(ctx, HTTP_LUA, name=f"http{i}", env={"RINGLINE_HTTP_ROOT": root})
           for i in range(2)]
    px = start_proxy(ctx, [url_of(u) for u in ups], workers=2)
    base = f"http://127.0.0.1:{px.port}"

    def curl(*args):
        p = subprocess.run(["curl", "-sS", "--max-time", str(int(20 * ctx.factor)), *args],
                           capture_output=True, timeout=60 * ctx.factor)
        check(p.returncode == 0, f"curl {' '.join(args)} exited {p.returncode}: "
                                 f"{p.stderr[-300:]!r}")
        return p.stdout

    check(curl(base + "/") == b"hello world\n", "GET / through the proxy")
    got = curl("--data-binary", "@" + body_path, "-H", "Content-Type: application/octet-stream",
               base + "/echo")
    check(got == body, f"POST /echo of 1 MiB through the proxy: got {len(got)} bytes back"
                       f"{' (different bytes)' if len(got) == len(body) else ''}")
    check(curl(base + "/static/blob.bin") == blob, "static file through the proxy differs")
    out = curl("-w", "[%{http_code} %{num_connects}]\n", base + "/", base + "/static/blob.bin",
               base + "/")
    want = (b"hello world\n[200 1]\n" + blob + b"[200 0]\n" + b"hello world\n[200 0]\n")
    check(out == want, "three requests with keep-alive through the proxy: "
                       f"{out[:40]!r}...{out[-60:]!r} (the [code connects] tags show "
                       "whether the connection was reused)")
    px.assert_alive()
    check_no_leftovers(ctx, px)
