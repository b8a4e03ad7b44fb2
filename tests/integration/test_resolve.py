"""Outbound connects by host name (ringline.connect("localhost:PORT")): the
name is resolved off the worker thread.

The server runs tests/scripts/resolve.lua with one worker: a client sends it
"connect ADDR [TIMEOUT]" and gets "started N", then "open N" / "data N ..." /
"close N REASON" as the outbound connection lives.  The upstream is
scripts/echo.lua.  RINGLINE_TEST_RESOLVE_DELAY_MS (a test knob, read once at
startup) makes every lookup wait in its resolver thread first, so a slow DNS
server can be shown without a network: the worker must keep serving its
other connections meanwhile, and a connection closed during the wait must
end at once and cleanly.
"""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time

from harness import EnvCtx, ECHO_LUA, Server, check, connect, fail, wait_for

RESOLVE_LUA = "tests/scripts/resolve.lua"


class _HostsServer(Server):
    """A server that sees hosts_file as /etc/hosts: it runs in its own user
    and mount namespace (unshare -rm) with the file bind-mounted there."""

    hosts_file = None

    def cmd(self):
        inner = " ".join(_sh_quote(a) for a in super().cmd())
        return ["unshare", "-rm", "sh", "-c",
                f"mount --bind {_sh_quote(self.hosts_file)} /etc/hosts && exec {inner}"]


def _sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def start_resolver_server(ctx, delay_ms=0, name="resolve", hosts=None):
    env = {"RINGLINE_TEST_RESOLVE_DELAY_MS": str(delay_ms)} if delay_ms else {}
    cls = Server
    if hosts is not None:
        cls = type("HostsServer", (_HostsServer,), {"hosts_file": hosts})
    srv = cls(EnvCtx(ctx, env), script=RESOLVE_LUA, name=name,
              args=["--workers", "1"])
    ctx.servers.append(srv)
    srv.start()
    return srv


class Ctl:
    """A client of resolve.lua: commands out, event lines in."""

    def __init__(self, addr):
        self.s = connect(addr, 5)
        self.buf = b""
        self.seen = []

    def cmd(self, line):
        self.s.sendall(line.encode() + b"\n")

    def line(self, timeout):
        """The next line, or None when none comes within timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            # Timeout 0: one look at what has arrived, without waiting.
            self.s.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                b = self.s.recv(4096)
            except (socket.timeout, BlockingIOError):
                return None
            if not b:
                fail(f"resolve.lua closed the control connection; lines so far: {self.seen}")
            self.buf += b
        ln, self.buf = self.buf.split(b"\n", 1)
        ln = ln.decode()
        self.seen.append(ln)
        return ln

    def expect(self, pattern, timeout, what):
        """Read lines until one matches pattern; returns the match."""
        deadline = time.monotonic() + timeout
        while True:
            ln = self.line(max(0.0, deadline - time.monotonic()))
            if ln is None:
                fail(f"no {what} within {timeout:.1f}s (want /{pattern}/); lines: {self.seen[-8:]}")
            m = re.match(pattern, ln)
            if m:
                return m

    def quiet(self, seconds):
        """Lines that arrive within seconds."""
        out = []
        deadline = time.monotonic() + seconds
        while True:
            ln = self.line(max(0.0, deadline - time.monotonic()))
            if ln is None:
                return out
            out.append(ln)

    def start(self, addr, timeout_ms=None):
        self.cmd(f"connect {addr}" + (f" {timeout_ms}" if timeout_ms else ""))
        return int(self.expect(r"^started (\d+)$", 5, f"'started' for {addr}").group(1))

    def close(self):
        self.s.close()


def test_resolve_connect_by_name(ctx):
    """connect("localhost:PORT") and "tcp://localhost:PORT" reach the echo
    upstream (on_open, bytes both ways, on_close "local" after close());
    numeric addresses still work the same way."""
    up = ctx.server(ECHO_LUA, args=["--workers", "1"])
    srv = start_resolver_server(ctx)
    c = Ctl(srv.addr)
    try:
        t = 5 * ctx.factor
        for addr in (f"localhost:{up.port}", f"tcp://localhost:{up.port}",
                     f"127.0.0.1:{up.port}"):
            n = c.start(addr)
            c.expect(rf"^open {n}$", t, f"on_open of {addr}")
            c.cmd(f"send {n} hello via {addr}")
            c.expect(rf"^data {n} hello via {re.escape(addr)}$", t, f"the echo through {addr}")
            c.cmd(f"close {n}")
            c.expect(rf"^close {n} local$", t, f"on_close of {addr}")
    finally:
        c.close()
    srv.assert_alive()


def _can_fake_hosts(ctx, path):
    if not shutil.which("unshare"):
        return False
    try:
        p = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount --bind {_sh_quote(path)} /etc/hosts && getent ahosts multi.test"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0 and "::1" in p.stdout and "127.0.0.1" in p.stdout


def test_resolve_tries_each_address(ctx):
    """A name with several addresses: they are tried in getaddrinfo's order
    until one connects ("multi.test" is ::1, where nothing listens, then
    127.0.0.1, where the echo upstream is); when every one refuses, on_close
    gets the last error.  Needs unshare(1) and user namespaces to give the
    server its own /etc/hosts; skipped otherwise."""
    hosts = os.path.join(ctx.tmpdir, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 localhost\n::1 multi.test\n127.0.0.1 multi.test\n"
                "::1 v6only.test\n")
    if not _can_fake_hosts(ctx, hosts):
        ctx.note("SKIPPED: cannot give the server its own /etc/hosts (unshare -rm)")
        return
    up = ctx.server(ECHO_LUA, args=["--workers", "1"])
    srv = start_resolver_server(ctx, hosts=hosts)
    c = Ctl(srv.addr)
    try:
        t = 5 * ctx.factor
        n = c.start(f"multi.test:{up.port}")
        m = c.expect(rf"^(open|close) {n} ?(.*)$", t, "the connect to multi.test")
        check(m.group(1) == "open", f"multi.test (::1 refuses, 127.0.0.1 echoes): {m.group(0)!r}")
        c.cmd(f"send {n} second address")
        c.expect(rf"^data {n} second address$", t, "the echo through the second address")
        c.cmd(f"close {n}")
        c.expect(rf"^close {n} local$", t, "on_close")
        n = c.start(f"v6only.test:{up.port}")
        m = c.expect(rf"^(open|close) {n} ?(.*)$", t, "the connect to v6only.test")
        check(m.group(0) == f"close {n} Connection refused",
              f"v6only.test (::1, nothing listening): {m.group(0)!r}")
    finally:
        c.close()


def test_resolve_unresolvable_name(ctx):
    """A name that does not resolve calls on_close(conn, reason) without
    on_open; the reason names the host and says why (gai_strerror)."""
    srv = start_resolver_server(ctx)
    c = Ctl(srv.addr)
    try:
        n = c.start("no-such-host.invalid:80")
        m = c.expect(rf"^(open|close) {n} ?(.*)$", 10 * ctx.factor, "on_close")
        check(m.group(1) == "close", f"an unresolvable name got on_open: {c.seen}")
        reason = m.group(2)
        check("no-such-host.invalid" in reason and "cannot resolve" in reason,
              f"on_close reason {reason!r} does not name the host that did not resolve")
        ctx.log(f"reason: {reason}")
        # A malformed address is refused at once, as before.
        c.cmd("connect no-port-here")
        c.expect(r"^error invalid address 'no-port-here' \(expected tcp://host:port", 5,
                 "the error for a bad address, in words")
    finally:
        c.close()


def _ping_while(pinger, until_fn, limit_s):
    """Ping through pinger every ~10 ms until until_fn() is true; returns the
    round-trip times in seconds."""
    rtts = []
    deadline = time.monotonic() + limit_s
    i = 0
    while not until_fn() and time.monotonic() < deadline:
        i += 1
        t0 = time.monotonic()
        pinger.cmd(f"ping {i}")
        pinger.expect(rf"^pong {i}$", 5 * 1.0, f"pong {i}")
        rtts.append(time.monotonic() - t0)
        time.sleep(0.01)
    return rtts


def test_resolve_slow_lookup_does_not_stall_worker(ctx):
    """With every lookup delayed 1 s (RINGLINE_TEST_RESOLVE_DELAY_MS=1000),
    another connection of the same single worker keeps answering pings in
    a few ms during the whole wait; the connect completes after ~1 s."""
    up = ctx.server(ECHO_LUA, args=["--workers", "1"])
    srv = start_resolver_server(ctx, delay_ms=1000)
    c, p = Ctl(srv.addr), Ctl(srv.addr)
    try:
        p.cmd("ping warmup")
        p.expect(r"^pong warmup$", 5, "the first pong")
        t0 = time.monotonic()
        n = c.start(f"localhost:{up.port}")
        started = time.monotonic() - t0
        opened = []

        def is_open():
            # Non-blocking look at the control connection.
            ln = c.line(0)
            while ln is not None:
                if ln == f"open {n}":
                    opened.append(time.monotonic() - t0)
                    return True
                ln = c.line(0)
            return False

        rtts = _ping_while(p, is_open, 10 * ctx.factor)
        check(opened, f"the connect by name never completed; lines: {c.seen}")
        rtts.sort()
        worst, med = rtts[-1], statistics.median(rtts)
        ctx.log(f"connect returned in {started * 1000:.1f} ms, on_open after {opened[0]:.2f}s; "
                f"{len(rtts)} pings meanwhile: median {med * 1000:.1f} ms, max {worst * 1000:.1f} ms")
        check(started < 0.5 * ctx.factor,
              f"connect() took {started:.2f}s to return with a 1 s lookup delay: it waited for it")
        check(opened[0] >= 0.9, f"on_open after {opened[0]:.2f}s, before the 1 s delay: the "
                                "test knob had no effect")
        check(len(rtts) >= 20, f"only {len(rtts)} pings during the delay")
        limit = 0.2 * ctx.factor
        check(worst < limit,
              f"a ping took {worst * 1000:.0f} ms (limit {limit * 1000:.0f} ms, median "
              f"{med * 1000:.1f} ms) while a name was resolving: the worker was stalled")
        ctx.note(f"pings during a 1 s lookup: median {med * 1000:.1f} ms, "
                 f"max {worst * 1000:.1f} ms")
        c.cmd(f"send {n} after the wait")
        c.expect(rf"^data {n} after the wait$", 5 * ctx.factor, "the echo")
    finally:
        c.close()
        p.close()


def test_resolve_close_during_lookup(ctx):
    """With lookups delayed 1 s: close() and abort() during the wait end
    the connection at once (on_close "local", never on_open, the late answer
    dropped); a 300 ms connect timeout fires during the wait, not after it;
    a reload during the wait keeps the connection, which then opens."""
    up = ctx.server(ECHO_LUA, args=["--workers", "1"])
    srv = start_resolver_server(ctx, delay_ms=1000)
    c = Ctl(srv.addr)
    t = 5 * ctx.factor
    try:
        for how in ("close", "abort"):
            n = c.start(f"localhost:{up.port}")
            time.sleep(0.2)
            t0 = time.monotonic()
            c.cmd(f"{how} {n}")
            c.expect(rf"^close {n} local$", t, f"on_close after {how}()")
            dt = time.monotonic() - t0
            check(dt < 0.5 * ctx.factor,
                  f"on_close came {dt:.2f}s after {how}() during the lookup: it waited for it")
            # The answer comes about 0.8 s later and must go nowhere.
            late = c.quiet(1.2)
            check(not late, f"after {how}() during the lookup: unexpected {late}")

        # The timeout covers the lookup.
        t0 = time.monotonic()
        n = c.start(f"localhost:{up.port}", timeout_ms=300)
        m = c.expect(rf"^(open|close) {n} ?(.*)$", t, "the connect timeout")
        dt = time.monotonic() - t0
        check(m.group(1) == "close" and "timed out" in m.group(2),
              f"a 300 ms timeout with a 1 s lookup: got {m.group(0)!r}")
        check(0.25 <= dt <= 0.3 + 0.4 * ctx.factor,
              f"the 300 ms connect timeout fired after {dt:.2f}s")
        check(not c.quiet(1.0), f"lines after the timeout: {c.seen[-3:]}")

        # A reload during the wait keeps the pending connection.
        n = c.start(f"localhost:{up.port}")
        srv.send_signal(signal.SIGHUP)
        check(wait_for(lambda: re.search(r"reload 1: all 1 worker\(s\) switched", srv.stderr()),
                       t), f"the reload did not switch: {srv.stderr_tail()}")
        c.expect(rf"^open {n}$", t, "on_open after a reload during the lookup")
        c.cmd(f"send {n} kept")
        c.expect(rf"^data {n} kept$", t, "the echo after the reload")
    finally:
        c.close()
    srv.assert_alive()


def test_resolve_stop_during_lookup(ctx):
    """SIGTERM while a lookup waits (10 s test delay): the worker does not
    wait for it, the process exits promptly with code 0 (and, under ASan,
    without leaks)."""
    srv = start_resolver_server(ctx, delay_ms=10000)
    c = Ctl(srv.addr)
    try:
        for _ in range(3):
            c.start("localhost:9")
        time.sleep(0.2)
        t0 = time.monotonic()
        rc = srv.stop(signal.SIGTERM, timeout=8)
        dt = time.monotonic() - t0
    finally:
        c.close()
    check(rc == 0, f"exit code {rc} after SIGTERM: {srv.stderr_tail()}")
    check(dt < 2.0 * ctx.factor, f"the process took {dt:.1f}s to stop with lookups pending")
    ctx.log(f"stopped in {dt * 1000:.0f} ms with 3 lookups pending")


def test_resolve_pending_limit(ctx):
    """More lookups than the process allows pending (256) are refused by
    connect() with an error saying so; aborting the pending ones frees the
    room again."""
    srv = start_resolver_server(ctx, delay_ms=5000)
    c = Ctl(srv.addr)
    try:
        c.cmd("\n".join("connect localhost:9" for _ in range(300)))
        started, errors = [], []
        while len(started) + len(errors) < 300:
            ln = c.line(10 * ctx.factor)
            check(ln is not None, f"only {len(started) + len(errors)} of 300 connects answered")
            if ln.startswith("started "):
                started.append(int(ln.split()[1]))
            elif ln.startswith("error "):
                errors.append(ln)
        check(len(started) == 256 and len(errors) == 44,
              f"300 connects with 256 allowed pending: {len(started)} started, "
              f"{len(errors)} refused")
        check("256 name resolutions pending" in errors[0],
              f"the refusal does not say why: {errors[0]!r}")
        c.cmd("\n".join(f"abort {n}" for n in started))
        closed = 0
        while closed < len(started):
            ln = c.line(10 * ctx.factor)
            check(ln is not None, f"only {closed} of {len(started)} aborted connects closed")
            closed += ln.startswith("close ")
        n = c.start("localhost:9")
        c.cmd(f"abort {n}")
        c.expect(rf"^close {n} local$", 5 * ctx.factor, "on_close")
    finally:
        c.close()
