"""Coroutines and cosockets (tests/scripts/cosocket.lua): sequential
on_connect handlers, the Redis client against redis-server with a bounded
pool, connect and read errors, slices across a wait, light threads."""

import os
import signal
import socket
import threading
import time

from harness import SCRIPTS, EnvCtx, Server, check, connect, free_port, recv_line, wait_for
import test_proxy

COSOCKET_LUA = os.path.join(SCRIPTS, "cosocket.lua")


def _server(ctx, env=None):
    s = Server(EnvCtx(ctx, env or {}), script=COSOCKET_LUA, args=["--workers", "1"])
    ctx.servers.append(s)
    s.start()
    return s


def _ask(sock, line, timeout=20.0):
    sock.sendall(line.encode() + b"\n")
    return recv_line(sock, timeout).decode().rstrip("\n")


def test_cosocket_redis_1000_tasks_pool_bounded(ctx):
    """1,000 tasks at once, each a SET and a GET of its own key through the
    Redis client, every answer checked; at most pool_size (20) connections
    to redis-server are ever opened, over two rounds of all of them."""
    _, port, _ = test_proxy._start_redis(ctx)
    srv = _server(ctx, {"RINGLINE_TEST_REDIS": f"127.0.0.1:{port}"})
    s = connect(srv.addr)
    got = _ask(s, "redis 1000 2 20", timeout=60)
    parts = got.split()
    check(parts[:2] == ["done", "1000"], f"answer: {got}")
    check(parts[3] == "0" and parts[7] == "0", f"wrong answers or failed tasks: {got}")
    fresh = int(parts[5])
    check(1 <= fresh <= 20, f"{fresh} connections opened to redis-server for a pool of 20: {got}")
    print(f"    [{ctx.name}] 2,000 SET+GET from 1,000 tasks over {fresh} upstream connections")
    check(_ask(s, "echo still here") == "still here", "the service goes on")
    s.close()


def test_cosocket_redis_value_as_slice(ctx):
    """get_slice: a 200,000-byte value comes back as a slice over the
    receive buffer, equal to what was set; a missing key is redis.null; the
    slice raises after the task's next wait."""
    _, port, _ = test_proxy._start_redis(ctx)
    srv = _server(ctx, {"RINGLINE_TEST_REDIS": f"127.0.0.1:{port}"})
    s = connect(srv.addr)
    got = _ask(s, "gslice 200000")
    check(got == "gslice 200000 true true true dead", f"answer: {got}")
    s.close()


def test_cosocket_connect_and_read_errors(ctx):
    """A refused connect and a read that times out come back as
    nil, reason (never raised); the handler goes on."""
    srv = _server(ctx)
    s = connect(srv.addr)
    closed_port = free_port()
    got = _ask(s, f"connect 127.0.0.1:{closed_port}")
    check(got.startswith("err ") and "refused" in got, f"refused connect: {got}")
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    silent = lst.getsockname()[1]
    t0 = time.monotonic()
    got = _ask(s, f"read 127.0.0.1:{silent} 200")
    took = time.monotonic() - t0
    check(got == "err timeout", f"silent backend: {got}")
    check(took >= 0.15, f"timed out after {took:.3f} s, before the 200 ms read timeout")
    # A backend that answers: the line comes back.
    def answer():
        c, _ = lst.accept()
        c.sendall(b"hello from backend\r\n")
        time.sleep(0.5)
        c.close()
    th = threading.Thread(target=answer, daemon=True)
    th.start()
    got = _ask(s, f"read 127.0.0.1:{silent} 2000")
    th.join()
    # The first accept of the listener took the timed-out connection.
    check(got in ("line hello from backend", "err timeout", "err closed"), f"answering backend: {got}")
    check(_ask(s, "sleep 20") == "slept", "sleep")
    lst.close()
    s.close()


def test_cosocket_connect_to_a_blackhole_times_out(ctx):
    """A connect that gets no answer (a listener whose accept queue is full
    drops the SYNs) returns nil, "timeout" after the connect timeout."""
    srv = _server(ctx)
    s = connect(srv.addr)
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    for _ in range(4):              # more than the queue holds
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))
        fillers.append(f)
    time.sleep(0.2)
    t0 = time.monotonic()
    got = _ask(s, f"connectms 127.0.0.1:{port} 300")
    took = time.monotonic() - t0
    check(got == "err timeout", f"blackhole connect: {got}")
    check(0.25 <= took < 2.5, f"timed out after {took:.2f} s for a 300 ms connect timeout")
    check(_ask(s, "echo after") == "after", "the task goes on")
    for f in fillers:
        f.close()
    lst.close()
    s.close()


def test_cosocket_slice_dies_at_the_next_wait(ctx):
    """A slice from sock:read() reads the receive buffer in place until the
    task's next wait; used after it, it raises (nothing reads recycled
    memory)."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    port = lst.getsockname()[1]

    def serve():
        c, _ = lst.accept()
        c.sendall(b"abcdefgh")
        time.sleep(1)
        c.close()
    th = threading.Thread(target=serve, daemon=True)
    th.start()
    srv = _server(ctx)
    s = connect(srv.addr)
    got = _ask(s, f"slice 127.0.0.1:{port}")
    check(got.startswith("first abcd after err") and "slice used after" in got, f"slice: {got}")
    th.join()
    lst.close()
    s.close()


def test_cosocket_threads_and_errors(ctx):
    """thread.wait returns the first task to end; a failing on_connect task
    is logged with its line and closes only its own connection."""
    srv = _server(ctx)
    a = connect(srv.addr)
    b = connect(srv.addr)
    t0 = time.monotonic()
    check(_ask(a, "first") == "first true fast", "thread.wait: the fast one")
    check(time.monotonic() - t0 < 0.25, "thread.wait waited for the slow one")
    a.sendall(b"boom\n")
    check(a.recv(100) == b"", "the failed task's connection closes")
    check(wait_for(lambda: "boom requested" in srv.stderr(), 5), "error logged")
    check("cosocket.lua:" in srv.stderr(), "the log names the script's line")
    check(_ask(b, "echo other") == "other", "other connections go on")
    a.close()
    b.close()


def test_cosocket_reload_while_tasks_wait(ctx):
    """A reload while tasks are suspended: they finish with the code that
    started them, their connections stay, a new connection is served."""
    srv = _server(ctx)
    a = connect(srv.addr)
    a.sendall(b"sleep 800\n")
    time.sleep(0.1)
    srv.proc.send_signal(signal.SIGHUP)
    check(wait_for(lambda: "switched" in srv.stderr(), 5), "the reload switched")
    check(recv_line(a, 5).rstrip(b"\n") == b"slept", "the waiting task finished")
    check(_ask(a, "echo same conn") == "same conn", "its connection goes on")
    b = connect(srv.addr)
    check(_ask(b, "echo new conn") == "new conn", "a new connection after the reload")
    a.close()
    b.close()


def test_cosocket_memcached_client(ctx):
    """The memcached client's every command against memcached 1.6 and
    against ringline's own memcached.lua, each answer checked (a 320 KB
    value included: built past the residue)."""
    import test_memcached
    real = test_memcached.start_memcached(ctx)
    ours = test_memcached.start_ringline(ctx, workers=1)
    srv = _server(ctx)
    s = connect(srv.addr)
    for name, peer in (("memcached", real), ("memcached.lua", ours)):
        got = _ask(s, f"mc 127.0.0.1:{test_memcached.port_of(peer)}")
        check(got == "mc ok", f"against {name}: {got}")
    s.close()


def test_cosocket_closed_when_its_task_ends(ctx):
    """A task that ends without closing its socket: the socket closes with
    it (what it sent still goes out), so no connection or receive buffer
    outlives the task."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    srv = _server(ctx)
    s = connect(srv.addr)
    check(_ask(s, f"forget 127.0.0.1:{lst.getsockname()[1]}") == "forgot", "the task ran")
    c, _ = lst.accept()
    c.settimeout(5)
    got = b""
    while True:
        chunk = c.recv(100)
        if not chunk:
            break
        got += chunk
    check(got == b"hi\n", f"the backend got {got!r} and then the close")
    c.close()
    lst.close()
    s.close()
