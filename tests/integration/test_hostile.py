"""Clients that pipeline requests and read the answers slowly or never:
a handler stops where its connection passes --high-water, the rest of the
pipeline is held, and it is answered in full, in order, once the client
reads.  Memory per such client is bounded; a fresh client is served."""

import os
import re
import signal
import socket
import struct
import time

from harness import (SCRIPTS, EnvCtx, Server, check, connect, free_port, recv_exact, ring_kb,
                     rss_kb, stats_line, wait_for)

AMPLIFY_LUA = f"{SCRIPTS}/amplify.lua"
BODY = 65536
HIGH, LOW = 256 << 10, 64 << 10


def _server(ctx, script=AMPLIFY_LUA, args=(), env=None, listen=None):
    s = Server(EnvCtx(ctx, env or {}), script=script, listen=listen,
               args=["--workers", "1"] + list(args))
    ctx.servers.append(s)
    s.start()
    return s


def _answer(n):
    head = b"answer %d\n" % n
    return head + (b"%d" % (n % 10)) * (BODY - len(head) - 1) + b"\n"


def _slow_reader(srv):
    s = connect(srv.addr, rcvbuf=4096)
    return s


def _read_answers(s, first, count, timeout):
    for n in range(first, first + count):
        want = _answer(n)
        got = recv_exact(s, len(want), timeout=timeout, what=f"answer {n}")
        check(got == want, f"answer {n}: got {got[:40]!r}..., want {want[:40]!r}...")


def test_handler_stops_at_high_water_and_resumes_in_order(ctx):
    """1,000 pipelined requests of 64 KiB answers each (64 MiB) from a
    client that reads nothing for a second: the queue never passes
    --high-water by more than one answer, the handler is never called while
    over it, and the client then gets every answer, byte-exact, in order."""
    srv = _server(ctx, args=["--high-water", HIGH, "--low-water", LOW])
    s = _slow_reader(srv)
    n = 1000
    # 64-byte lines: the pipeline is 4 receive buffers, so arrivals are
    # on their way when the handler stops in the first.
    s.sendall(b"".join(b"%-63d\n" % i for i in range(n)))
    time.sleep(1.0)
    st = stats_line(srv)
    check(st["max_unsent"] <= HIGH + BODY,
          f"unsent reached {st['max_unsent']}, over --high-water {HIGH} + one answer")
    check(st["calls_blocked"] == 0, f"the handler ran while over high water: {st}")
    _read_answers(s, 0, n, 20 * ctx.factor)
    s.close()
    st = stats_line(srv)
    check(st["calls_blocked"] == 0, f"the handler ran while over high water: {st}")
    ctx.note(f"64 MiB of answers to one pipelined write, at most {st['max_unsent']} bytes "
             f"queued (high water {HIGH})")


def test_blocked_connections_bounded_fresh_client_served(ctx):
    """Thirty clients pipelining and never reading: the server's memory
    grows by a bounded amount per client (the queue up to --high-water,
    one answer, the held requests), and a fresh client is answered.  At
    --high-water 1m (the default before 32k), so that the peak is large
    enough for RSS after they leave to say whether the heap went back
    (test_hostile_rows.py holds the default to its bound).  RSS is read
    without the receive ring (shared by all connections, bounded, and
    kept: its pages are the next arrivals')."""
    srv = _server(ctx, args=["--high-water", "1m", "--low-water", "256k"])

    def used():
        return rss_kb(srv.pid) - ring_kb(srv.pid)
    before = used()
    hogs = [_slow_reader(srv) for _ in range(30)]
    req = b"".join(b"%d\n" % i for i in range(2000))
    for h in hogs:
        h.setblocking(False)
    t_end = time.monotonic() + 2.0
    peak = before
    while time.monotonic() < t_end:
        for h in hogs:
            try:
                h.send(req)
            except BlockingIOError:
                pass
        peak = max(peak, used())
        time.sleep(0.01)
    fresh = connect(srv.addr)
    fresh.sendall(b"7\n")
    check(recv_exact(fresh, BODY, timeout=5 * ctx.factor, what="the fresh client's answer")
          == _answer(7), "fresh client: wrong answer")
    fresh.close()
    per_conn = (peak - before) / len(hogs)
    # Each hog (1.2 MiB measured): --high-water + one answer queued, the
    # held requests (in their receive buffers, the ring's), the allocator's
    # slack.  Without the stop it was the whole pipeline's answers: 2,000 x
    # 64 KiB per write.
    # (Under ASan freed memory sits in its quarantine: RSS says nothing
    # about live bytes there, so only the plain build is held to it.)
    limit = 4096
    if not ctx.asan:
        check(per_conn < limit, f"{per_conn:.0f} KiB per non-reading client, want < {limit}")
    for h in hogs:
        h.close()
    # Once they are gone and the worker is idle, the heap they used goes
    # back to the kernel (malloc_trim a second after the closes).
    st = {}

    def trimmed():
        st.update(stats_line(srv))
        return st["conns"] == 1 and st["heap_trims"] >= 1
    check(wait_for(trimmed, 10 * ctx.factor, interval=0.2), f"no heap trim after the closes: {st}")
    after = used()
    if not ctx.asan:
        # Measured: 6 -> 39 -> 19 MiB before outbound TLS, 6 -> 40 -> 22-24
        # MiB since (plain buffers behind every ring; not yet explained,
        # README leftovers): at most 60 % of the peak's growth stays.
        check(after - before <= (peak - before) * 0.6,
              f"RSS {before} -> {peak} -> {after} KiB: the heap did not go back")
    ctx.note(f"30 non-reading clients: {per_conn:.0f} KiB each at --high-water 1m; "
             f"RSS {before >> 10} -> {peak >> 10} -> {after >> 10} MiB after they left")


def test_close_and_reload_while_blocked(ctx):
    """A connection held over high water: a reload meanwhile changes
    nothing it is owed (the held requests are answered by the new code, in
    order, and nothing is lost); a peer that resets while held gives every
    buffer back."""
    srv = _server(ctx, args=["--high-water", HIGH, "--low-water", LOW])
    s = _slow_reader(srv)
    n = 200
    s.sendall(b"".join(b"%d\n" % i for i in range(n)))
    time.sleep(0.5)
    srv.send_signal(signal.SIGHUP)
    check(wait_for(lambda: re.search(r"reload \d+: all \d+ worker\(s\) switched", srv.stderr()),
                   10 * ctx.factor), f"no reload: {srv.stderr_tail()}")
    _read_answers(s, 0, n, 20 * ctx.factor)
    s.close()
    r = _slow_reader(srv)
    r.sendall(b"".join(b"%d\n" % i for i in range(n)))
    time.sleep(0.5)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    r.close()
    st = {}

    def settled():
        st.update(stats_line(srv))
        return st["conns"] == 1 and st["buffers_leased"] == 1
    check(wait_for(settled, 10 * ctx.factor, interval=0.1),
          f"buffers not back after a reset while held: {st}")


def _mc_get_all(ctx, srv, value, n):
    s = _slow_reader(srv)
    s.sendall(b"get big\r\n" * n)
    time.sleep(0.5)
    want = b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(value), value)
    got = recv_exact(s, len(want) * n, timeout=20 * ctx.factor, what="the held gets' answers")
    s.close()
    return got == want * n


def test_memcached_and_redis_pipelines_held_and_answered(ctx):
    """The bundled memcached and Redis services stop at high water between
    commands: 4,000 pipelined gets of a 4 KiB value from a client that reads
    late are all answered, byte-exact."""
    value = os.urandom(2048).hex().encode()
    port = free_port()
    mc = _server(ctx, script="scripts/memcached.lua",
                 listen=[f"tcp://127.0.0.1:{port}"],
                 args=["--high-water", HIGH, "--low-water", LOW])
    s = connect(mc.addr)
    s.sendall(b"set big 0 0 %d\r\n%s\r\n" % (len(value), value))
    check(recv_exact(s, 8, what="STORED") == b"STORED\r\n", "set big")
    s.close()
    check(_mc_get_all(ctx, mc, value, 4000), "memcached: held gets answered wrong")
    port = free_port()
    rd = _server(ctx, script="scripts/redis.lua", listen=[f"tcp://127.0.0.1:{port}"],
                 args=["--high-water", HIGH, "--low-water", LOW])
    s = connect(rd.addr)
    s.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n%s\r\n" % (len(value), value))
    check(recv_exact(s, 5, what="+OK") == b"+OK\r\n", "SET big")
    s.close()
    s = _slow_reader(rd)
    n = 4000
    s.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * n)
    time.sleep(0.5)
    want = b"$%d\r\n%s\r\n" % (len(value), value)
    got = recv_exact(s, len(want) * n, timeout=20 * ctx.factor, what="the held GETs' answers")
    check(got == want * n, "redis: held GETs answered wrong")
    s.close()


def test_client_memory_budget_closes_largest_first(ctx):
    """--max-client-memory 40m on redis.lua (which lets one connection keep
    1 GiB of a bulk string unconsumed): two clients send 6 and 3 MiB of
    bulk strings they have not finished, a third sends 24 MiB of one.
    Past the budget the largest holder is closed, logged with its peer
    and bytes, counted; the others finish their SETs and a fresh client is
    served."""
    srv = _server(ctx, script="scripts/redis.lua",
                  args=["--max-client-memory", "40m"])
    mib = 1 << 20

    def start(n_total, n_now):
        s = connect(srv.addr)
        s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % n_total)
        s.sendall(b"v" * n_now)
        return s

    b = start(8 * mib, 6 * mib)
    c = start(4 * mib, 3 * mib)
    time.sleep(0.3)
    a = start(64 * mib, 0)
    a.settimeout(10 * ctx.factor)
    closed = False
    try:
        for _ in range(24):
            a.sendall(b"v" * mib)
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    if not closed:
        try:
            closed = a.recv(100) == b""
        except ConnectionResetError:
            closed = True
    check(closed, "the largest holder was not closed")
    for s, rest in ((b, 2 * mib), (c, 1 * mib)):
        s.sendall(b"v" * rest + b"\r\n")
        check(recv_exact(s, 5, timeout=5 * ctx.factor, what="+OK") == b"+OK\r\n",
              "a smaller holder was not served")
        s.close()
    f = connect(srv.addr)
    f.sendall(b"PING\r\n")
    check(recv_exact(f, 7, what="PONG") == b"+PONG\r\n", "fresh client")
    f.close()
    a.close()
    with open(srv.stderr_path) as fh:
        log = fh.read()
    lines = [l for l in log.splitlines() if "max-client-memory" in l]
    check(len(lines) == 1, f"want one log line for the close, got {lines}")
    check("127.0.0.1:" in lines[0] and "holds" in lines[0], f"log line: {lines[0]}")
    ctx.log(lines[0].split("closing: ")[-1][:160])
    srv.assert_alive()
