"""Injected faults: the process's resources fail (file descriptors, the
ring's queues, the peer mid-send) and nothing is lost or leaked."""

import os
import socket
import struct
import time

from harness import (SCRIPTS, Server, check, connect, read_until_closed, recv_exact,
                     stats_line, wait_for)

FAULTS_LUA = f"{SCRIPTS}/faults.lua"


class _PrefixedServer(Server):
    """A server started through a wrapper command (it must exec)."""

    def __init__(self, ctx, prefix, **kw):
        super().__init__(ctx, **kw)
        self.prefix = list(prefix)

    def cmd(self):
        return self.prefix + super().cmd()


def _server(ctx, args=(), prefix=()):
    s = _PrefixedServer(ctx, prefix, script=FAULTS_LUA,
                        args=["--workers", "1"] + list(args))
    ctx.servers.append(s)
    s.start()
    return s


def _cpu_s(pid):
    """User + system CPU seconds of the process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _echoes(s, msg, timeout):
    """Does s echo msg within timeout?  False on timeout."""
    s.sendall(msg)
    try:
        return recv_exact(s, len(msg), timeout=timeout, what="an echo") == msg
    except AssertionError:
        return False


def _reset(s):
    """Close with SO_LINGER 0: the peer gets an RST, not a FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _settled(srv, want_conns=1):
    """Stats once only the stats connection is open and its own buffer is
    the one leased."""
    st = {}

    def quiet():
        st.update(stats_line(srv))
        return st["conns"] == want_conns and st["buffers_leased"] == 1
    wait_for(quiet, 10 * srv.ctx.factor, interval=0.1)
    return st


def test_accept_emfile_keeps_serving(ctx):
    """Out of file descriptors (a low RLIMIT_NOFILE): accepted connections
    keep being served, the accept is retried without spinning and logged
    once, and pending connections are accepted as soon as fds free up."""
    # Set at exec: io_uring's accept reads the limit when it is armed.
    limit = 20
    srv = _server(ctx, prefix=["prlimit", f"--nofile={limit}", "--"])
    fds = [int(f) for f in os.listdir(f"/proc/{srv.pid}/fd")]
    check(max(fds) < limit, f"fds {fds} past the limit {limit}")
    room = limit - len(fds)
    socks = [connect(srv.addr) for _ in range(room + 6)]
    hello = {s: b"hello %d\n" % i for i, s in enumerate(socks)}
    served = [s for s in socks if _echoes(s, hello[s], 0.4 * ctx.factor)]
    waiting = [s for s in socks if s not in served]
    # (One fd of startup's may have closed since it was counted.)
    check(room <= len(served) <= room + 1 and waiting,
          f"{len(served)} connections served with room for {room} fds "
          f"(fds {sorted(fds)}, limit {limit}), {len(waiting)} waiting")
    now = len(os.listdir(f"/proc/{srv.pid}/fd"))
    check(now == limit, f"{now} fds open at the limit of {limit}")
    # While the accepts fail: no busy loop, the served ones still echo.
    cpu0, t0 = _cpu_s(srv.pid), time.monotonic()
    time.sleep(1.0)
    for i, s in enumerate(served):
        check(_echoes(s, b"still %d\n" % i, 2 * ctx.factor), f"served conn {i} stopped echoing")
    cpu = (_cpu_s(srv.pid) - cpu0) / (time.monotonic() - t0)
    check(cpu < 0.2, f"the server used {cpu:.2f} CPU s/s while accepts failed (spinning?)")
    # One line per failing spell: a startup fd that closes late lets one
    # retry succeed ("accepting again") and the next spell has its own.
    warns = srv.stderr().count("accept failed: Too many open files")
    spells = 1 + srv.stderr().count("accepting again after")
    check(warns == spells, f"{warns} accept-failure log lines, want {spells}: {srv.stderr_tail()}")
    # Free fds: the waiting connections are accepted and their bytes answered.
    for s in served[:len(waiting)]:
        s.close()
    for i, s in enumerate(waiting):
        msg = hello[s]
        check(recv_exact(s, len(msg), timeout=5 * ctx.factor, what=f"waiting conn {i}") == msg,
              f"waiting conn {i}: wrong echo")
    check(wait_for(lambda: "accepting again after" in srv.stderr(), 5 * ctx.factor),
          f"no recovery line: {srv.stderr_tail()}")
    for s in socks:
        s.close()
    st = _settled(srv)
    check(st["accept_errors"] >= 1, f"accept_errors not counted: {st}")
    ctx.note(f"EMFILE: {room} served, {len(waiting)} waited in the backlog, "
             f"{st['accept_errors']} failed accepts, {cpu:.3f} CPU s/s meanwhile")


test_accept_emfile_keeps_serving.time_limit = 60


def _overflowed(srv):
    st = stats_line(srv)
    return st["sq_full"] > 0 and st["cq_overflows"] > 0


def test_sq_full_and_cq_overflow(ctx):
    """--ring-entries 8 (an 8-entry SQ, a 32-entry CQ) under 200
    connections sending at once: more work than the SQ holds in one batch
    and more completions than the CQ holds; every byte is echoed in order.
    Whether a round's completions overflow the CQ depends on how they
    interleave with the worker (the kernel runs deferred completions in
    batches that fit): rounds go on, 5 at least, until both were seen."""
    srv = _server(ctx, ["--ring-entries", "8"])
    socks = []
    rounds = 0
    while rounds < 5 or (rounds < 40 and not _overflowed(srv)):
        r = rounds
        rounds += 1
        # Fresh connections each round, all at once: the accept burst is
        # what overflows the CQ most often.
        for s in socks:
            s.close()
        socks = [connect(srv.addr) for _ in range(200)]
        msgs = [b"round %d conn %d %s\n" % (r, i, b"x" * (i % 50)) for i in range(len(socks))]
        for s, m in zip(socks, msgs):
            s.sendall(m)
        for i, (s, m) in enumerate(zip(socks, msgs)):
            got = recv_exact(s, len(m), timeout=10 * ctx.factor, what=f"round {r} conn {i}")
            check(got == m, f"round {r} conn {i}: got {got!r}, sent {m!r}")
    for s in socks:
        s.close()
    st = _settled(srv)
    check(st["sq_full"] > 0, f"the SQ never filled: {st}")
    check(st["cq_overflows"] > 0, f"the CQ never overflowed: {st}")
    check(st["cq_dropped"] == 0, f"the kernel dropped completions: {st}")
    check(st["accepted"] > len(socks) and st["closed"] >= len(socks),
          f"connections not all accounted: {st}")
    ctx.note(f"200 conns x {rounds} rounds on an 8/32 ring: SQ full {st['sq_full']} times, "
             f"CQ overflowed in {st['cq_overflows']} polls, none dropped")


def test_reset_mid_large_send_releases_leases(ctx):
    """A peer that sends MiBs, reads none of the echo (zero-copy sends of
    the received buffers) and resets: the send fails mid-way, the
    connection closes, every leased buffer goes back.  Ten times."""
    srv = _server(ctx)
    payload = os.urandom(1 << 20)
    rounds = 10
    for i in range(rounds):
        s = connect(srv.addr, rcvbuf=4096)
        s.settimeout(0.2)
        sent = 0
        deadline = time.monotonic() + 10 * ctx.factor
        # The kernel's buffers take a few MiB; the rest queues in ringline
        # as leased buffers until --high-water stops its reads.
        while time.monotonic() < deadline:
            try:
                sent += s.send(payload)
            except socket.timeout:
                break
        check(sent >= 2 << 20, f"round {i}: only {sent} bytes went in")
        _reset(s)
    st = _settled(srv)
    check(st["closed"] >= rounds, f"not all reset connections were closed: {st}")
    check(st["paused"] >= rounds, f"the sends did not back up to --high-water: {st}")
    # The worker still serves, with its whole ring.
    s = connect(srv.addr)
    check(_echoes(s, b"after the resets\n", 5 * ctx.factor), "no echo after the resets")
    s.close()
    ctx.note(f"{rounds} resets with >= 1 MiB queued each: {st['buffers_leased']} buffer leased "
             f"(the stats request's own), {st['conns']} connection open")


test_reset_mid_large_send_releases_leases.time_limit = 90


def test_peer_closes_with_unread_data(ctx):
    """Peers that send and go away while the server still has bytes of
    theirs to read and answers to send.  One that half-closes (FIN) and
    reads late gets every byte answered before the server closes; one that
    closes outright makes its kernel reset, and the server drops the rest
    without leaking a buffer.  Thirty of each, interleaved."""
    srv = _server(ctx)
    total = 0
    late = []
    for i in range(60):
        s = connect(srv.addr)
        data = (b"line %d of a peer that will not read\n" % i) * (2000 + 300 * i)
        s.sendall(data)
        total += len(data)
        if i % 2:
            s.shutdown(socket.SHUT_WR)
            late.append((s, data))
        else:
            s.close()
    time.sleep(0.3)     # the FINs and resets are in before anyone reads
    for n, (s, data) in enumerate(late):
        got, how = read_until_closed(s, timeout=10 * ctx.factor)
        s.close()
        check(how == "eof", f"half-closed peer {n}: {how} after {len(got)} bytes")
        check(got == data, f"half-closed peer {n}: {len(got)} of {len(data)} bytes answered")
    st = _settled(srv)
    fin_total = sum(len(d) for _, d in late)
    check(fin_total <= st["offered_closed"] <= total,
          f"offered {st['offered_closed']} bytes; half-closed peers sent {fin_total}, "
          f"all {total}: {st}")
    ctx.note(f"30 half-closed peers answered in full; 30 that closed outright: "
             f"{st['offered_closed'] - fin_total} of {total - fin_total} bytes read "
             f"before the reset; every buffer back")
