"""Process lifecycle: SIGTERM/SIGINT draining, --max-conns (spec items 6, 7)."""

import selectors
import signal
import socket
import time

from harness import (ECHO_LUA, PatternStream, check, connect, echo_roundtrip, fail,
                     make_pool, proc_net_tcp_queues, read_back, read_until_closed,
                     recv_exact)


def _push(ctx, srv, n, per, rcvbuf, timeout):
    """n connections with a small receive buffer each send per bytes and
    read nothing."""
    pool = make_pool(ctx.rng)
    streams = [PatternStream(pool, ctx.rng.randrange(len(pool))) for _ in range(n)]
    socks = [connect(srv.addr, rcvbuf=rcvbuf) for _ in range(n)]
    sent = [0] * n
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_WRITE, i)
    deadline = time.monotonic() + timeout
    try:
        while sel.get_map():
            if time.monotonic() > deadline:
                fail(f"could not push {per} bytes on each of {n} connections in {timeout:.0f}s "
                     f"(sent {sent}); is the server reading? {srv.stderr_tail()}")
            for key, _ in sel.select(0.2):
                i = key.data
                try:
                    k = socks[i].send(streams[i].get(sent[i], min(1 << 16, per - sent[i])))
                except BlockingIOError:
                    continue
                sent[i] += k
                if sent[i] == per:
                    sel.unregister(socks[i])
    finally:
        sel.close()
    return socks, streams, sent


def _wait_server_read_all(srv, n, timeout):
    """Wait until the kernel holds no unread client bytes for the server: all
    of them are in the server's hands."""
    stable = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        srv_side, cli_side = proc_net_tcp_queues(srv.port)
        if (len(srv_side) >= n and all(rx == 0 for _, rx in srv_side)
                and all(tx == 0 for tx, _ in cli_side)):
            stable += 1
            if stable >= 3:
                time.sleep(0.2)
                return
        else:
            stable = 0
        time.sleep(0.05)
    fail(f"server did not read all client data within {timeout:.0f}s: "
         f"server-side queues {proc_net_tcp_queues(srv.port)[0][:10]}")


def _not_served(addr, timeout):
    """A connection attempt that must not be served: refused, closed, or at
    least never answered."""
    try:
        s = connect(addr, timeout=timeout)
    except (ConnectionRefusedError, ConnectionResetError, socket.timeout):
        return None
    try:
        try:
            s.sendall(b"after sigterm\n")
        except (BrokenPipeError, ConnectionResetError):
            return None
        data, how = read_until_closed(s, timeout)
        if data:
            return f"a connection made after SIGTERM was served: got {data!r}"
    finally:
        s.close()
    return None


def test_sigterm_drains_pending_sends(ctx):
    """SIGTERM with echoed data still queued: the server stops accepting,
    the clients get every pending byte then EOF, exit 0 within the drain
    timeout."""
    drain_ms = 15000
    srv = ctx.server(ECHO_LUA, drain_timeout_ms=drain_ms,
                     args=["--workers", "2", "--high-water", str(64 << 20),
                           "--low-water", str(32 << 20)])
    n, per = 10, int(4e6 * ctx.volume)
    socks, streams, sent = _push(ctx, srv, n, per, 8192, 30 * ctx.factor)
    try:
        _wait_server_read_all(srv, n, 15 * ctx.factor)
        t0 = time.monotonic()
        srv.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ctx.log(f"server alive 0.3 s after SIGTERM (still draining): {srv.alive()}")
        err = _not_served(srv.addr, 1.0)
        check(err is None, err)
        errors = read_back(socks, streams, sent, timeout=drain_ms / 1000.0, expect_eof=True)
        check(not errors, "clients did not get their pending echo after SIGTERM:\n  "
              + "\n  ".join(errors[:6]) + f"\n{srv.stderr_tail()}")
        rc = srv.wait(drain_ms / 1000.0 + 5 * ctx.factor)
        dt = time.monotonic() - t0
        if rc is None:
            dump = srv.thread_dump()
            srv.kill()
            fail(f"server still running {dt:.1f}s after SIGTERM though every client was served; "
                 f"{srv.stderr_tail()}{dump}")
        srv.checked = True
        check(rc == 0, f"exit code {rc} after SIGTERM, want 0; {srv.stderr_tail()}")
        check(dt < drain_ms / 1000.0, f"exit took {dt:.1f}s, more than the drain timeout")
    finally:
        for s in socks:
            s.close()


def test_sigterm_drain_timeout_bounds_exit(ctx):
    """A client that never reads cannot hold the exit past --drain-timeout."""
    srv = ctx.server(ECHO_LUA, drain_timeout_ms=1000,
                     args=["--workers", "2", "--high-water", str(64 << 20),
                           "--low-water", str(32 << 20)])
    socks, streams, sent = _push(ctx, srv, 2, 8 << 20, 8192, 30 * ctx.factor)
    idle = connect(srv.addr)
    try:
        _wait_server_read_all(srv, 3, 15 * ctx.factor)
        t0 = time.monotonic()
        srv.send_signal(signal.SIGTERM)
        limit = 1.0 + 3.0 * ctx.factor
        rc = srv.wait(limit)
        dt = time.monotonic() - t0
        if rc is None:
            dump = srv.thread_dump()
            srv.kill()
            fail(f"server did not exit within {limit:.1f}s of SIGTERM with --drain-timeout 1000 "
                 f"and a client that never reads; {srv.stderr_tail()}{dump}")
        srv.checked = True
        check(rc == 0, f"exit code {rc}, want 0; {srv.stderr_tail()}")
        ctx.log(f"exit {dt:.2f}s after SIGTERM")
        data, how = read_until_closed(idle, 2)
        check(how in ("eof", "reset") and not data,
              f"idle connection after exit: {how} {data!r}")
    finally:
        idle.close()
        for s in socks:
            s.close()


def test_sigint_idle(ctx):
    srv = ctx.server(ECHO_LUA, args=["--workers", "2"])
    a = connect(srv.addr)
    try:
        echo_roundtrip(srv.addr, b"x\n", sock=a)
        t0 = time.monotonic()
        srv.send_signal(signal.SIGINT)
        rc = srv.wait(3 * ctx.factor)
        if rc is None:
            dump = srv.thread_dump()
            srv.kill()
            fail(f"server did not exit within 3s of SIGINT with one idle connection; "
                 f"{srv.stderr_tail()}{dump}")
        srv.checked = True
        check(rc == 0, f"exit code {rc} after SIGINT, want 0; {srv.stderr_tail()}")
        data, how = read_until_closed(a, 2)
        check(how in ("eof", "reset"), f"idle connection not closed at exit ({how})")
        ctx.log(f"SIGINT exit in {time.monotonic() - t0:.2f}s")
    finally:
        a.close()


# --------------------------------------------------------------------------
# 7. --max-conns

def _open_working(ctx, addr, tag, retry_for=0.0):
    """Open a connection and check it echoes; retry (for a server that has
    not yet processed earlier closes) for up to retry_for seconds."""
    deadline = time.monotonic() + retry_for
    while True:
        s = connect(addr)
        try:
            payload = f"hello {tag}\n".encode()
            s.sendall(payload)
            got = recv_exact(s, len(payload), 3 * ctx.factor, what=f"echo on connection {tag}")
            check(got == payload, f"connection {tag}: echo mismatch {got!r}")
            return s
        except (AssertionError, ConnectionResetError, BrokenPipeError) as e:
            s.close()
            if time.monotonic() >= deadline:
                fail(f"connection {tag} was not served: {e}")
            time.sleep(0.1)


def _expect_rejected(ctx, addr, tag):
    try:
        s = connect(addr, timeout=2)
    except (ConnectionRefusedError, ConnectionResetError):
        return
    try:
        data, how = read_until_closed(s, 2 * ctx.factor)
        check(how in ("eof", "reset"),
              f"connection {tag} beyond --max-conns was not closed within {2 * ctx.factor:.0f}s")
        check(not data, f"connection {tag} beyond --max-conns received {data!r}")
    finally:
        s.close()


def test_max_conns(ctx):
    srv = ctx.server(ECHO_LUA, args=["--workers", "2", "--max-conns", "10"])
    time.sleep(0.3)                 # let the readiness probe's close be seen
    conns = []
    try:
        for i in range(10):
            conns.append(_open_working(ctx, srv.addr, f"#{i + 1}", retry_for=2 * ctx.factor))
        _expect_rejected(ctx, srv.addr, "#11")
        _expect_rejected(ctx, srv.addr, "#12")
        for i, s in enumerate(conns):
            echo_roundtrip(srv.addr, f"still #{i + 1}\n".encode(), sock=s)
        # Close three; new connections are accepted again (once the server
        # has seen the closes).
        for s in conns[:3]:
            s.close()
        conns = conns[3:]
        for i in range(3):
            conns.append(_open_working(ctx, srv.addr, f"new#{i + 1}", retry_for=3 * ctx.factor))
        _expect_rejected(ctx, srv.addr, "#11 again")
        for i, s in enumerate(conns):
            echo_roundtrip(srv.addr, f"final {i}\n".encode(), sock=s)
    finally:
        for s in conns:
            s.close()
    srv.assert_alive()


def test_churn_keeps_connection_accounting(ctx):
    """Thousands of short connections ending every way (client close,
    half-close, RST mid-echo, handler error) must not leak connection slots:
    afterwards exactly --max-conns connections can be open at once."""
    from harness import SCRIPTS, StreamClient, assert_clients_ok, run_clients
    import random
    cap = 100
    srv = ctx.server(f"{SCRIPTS}/boom.lua", args=["--workers", "2", "--max-conns", str(cap)])
    pool = make_pool(ctx.rng, no_b=True)
    rng = ctx.rng
    waves, per_wave = 25, 60
    for w in range(waves):
        clients = []
        for i in range(per_wave):
            kind = rng.choice(["close", "eof", "rst", "rst", "boom"])
            size = rng.choice([1, 100, 5000, 200_000])
            off = rng.randrange(len(pool) - size)
            data = pool[off:off + size]
            r = random.Random(rng.getrandbits(64))
            name = f"wave{w}.{kind}{i}"
            if kind == "close":
                c = StreamClient(name, srv.addr, [data], rng=r)
            elif kind == "eof":
                c = StreamClient(name, srv.addr, [data], rng=r, shut_wr=True, end="eof")
            elif kind == "rst":
                c = StreamClient(name, srv.addr, [data], rng=r, end="rst")
            else:
                c = StreamClient(name, srv.addr, [data, b"boom!"], expected=[data],
                                 gates=[0, size], rng=r, end="server_close", expect_min=size,
                                 piece=(1 << 20, 1 << 20))   # "boom!" in one write
            clients.append(c)
        assert_clients_ok(run_clients(clients, 30 * ctx.factor), clients, f"wave {w} clients")
    srv.assert_alive()
    time.sleep(0.5)
    conns = []
    try:
        for i in range(cap):
            conns.append(_open_working(ctx, srv.addr, f"#{i + 1} after churn", retry_for=2 * ctx.factor))
        _expect_rejected(ctx, srv.addr, f"#{cap + 1} after churn")
    finally:
        for s in conns:
            s.close()
    srv.assert_alive()


test_churn_keeps_connection_accounting.time_limit = 150


def test_sigterm_under_load(ctx):
    """SIGTERM in the middle of heavy traffic: exit 0 within the drain
    timeout, no crash; whatever the clients got is a correct prefix."""
    from harness import assert_clients_ok, echo_clients, run_clients
    srv = ctx.server(ECHO_LUA, drain_timeout_ms=3000, args=["--workers", "2"])
    clients = echo_clients(srv.addr, ctx.rng, 300, int(150e6 * ctx.volume), pause_prob=0.02)
    total = sum(c.expect_total for c in clients)
    t0 = []

    def sigterm():
        t0.append(time.monotonic())
        srv.send_signal(signal.SIGTERM)
    # SIGTERM once a quarter of the echo is back: traffic is in full swing.
    errors = run_clients(clients, 30 * ctx.factor, trigger=(total // 4, sigterm))
    check(t0, "the traffic ended before SIGTERM was sent (test bug)")
    t0 = t0[0]
    bad = [(n, e) for n, e in errors
           if not any(k in e for k in ("unexpected EOF", "reset", "send failed", "connect failed"))]
    assert_clients_ok(bad, clients, "clients (data errors, not closes)")
    rc = srv.wait(3 + 5 * ctx.factor)
    if rc is None:
        dump = srv.thread_dump()
        srv.kill()
        fail(f"server still running {time.monotonic() - t0:.1f}s after SIGTERM under load "
             f"(--drain-timeout 3000); {srv.stderr_tail()}{dump}")
    srv.checked = True
    check(rc == 0, f"exit code {rc}{' (signal)' if rc < 0 else ''} after SIGTERM under load; "
                   f"{srv.stderr_tail()}")
    ctx.log(f"{len(errors)} of {len(clients)} clients cut off by the shutdown")


def test_unix_listener_with_two_workers_starts(ctx):
    """A unix: listener with --workers 2 must start every time (the socket
    path is bound once, not raced by the workers)."""
    import os
    failures = []
    for i in range(8):
        path = os.path.join(ctx.tmpdir, f"w{i}.sock")
        srv = ctx.server(ECHO_LUA, listen=[f"unix:{path}"], args=["--workers", "2"], start=False)
        try:
            srv.start()
            echo_roundtrip(srv.addr, b"unix two workers\n")
            srv.stop()
        except AssertionError as e:
            errs = [ln for ln in srv.stderr().splitlines() if " info: " not in ln]
            failures.append(f"start {i + 1}: {str(e).splitlines()[0]} {errs[-1:]}")
            srv.kill()
            srv.checked = True
    check(not failures, f"{len(failures)} of 8 starts failed:\n" + "\n".join(failures))


def test_log_levels(ctx):
    """--log-level error hides the info lines; debug shows at least them."""
    quiet = ctx.server(ECHO_LUA, args=["--workers", "1", "--log-level", "error"])
    echo_roundtrip(quiet.addr, b"quiet\n")
    check(quiet.stop() == 0, "exit code on SIGTERM")
    info = [ln for ln in quiet.stderr().splitlines() if "info" in ln or "listening on" in ln]
    check(not info, f"--log-level error still logs info lines: {info[:3]}")
    loud = ctx.server(ECHO_LUA, args=["--workers", "1", "--log-level", "debug"])
    echo_roundtrip(loud.addr, b"loud\n")
    check(loud.stop() == 0, "exit code on SIGTERM")
    check("listening on" in loud.stderr(), "--log-level debug does not show the 'listening on' line")
    for srv in (quiet, loud):
        with open(srv.stdout_path, "rb") as f:
            out = f.read()
        check(not out, f"logs go to stderr, but the server wrote to stdout: {out[:200]!r}")
