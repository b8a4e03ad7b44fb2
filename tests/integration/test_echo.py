"""Echo correctness: many connections, tiny rings, half-close, unix sockets,
listen addresses (spec items 1, 2, 4, 11)."""

import os
import random
import socket
import time

from harness import (ECHO_LUA, StreamClient, assert_clients_ok, check, connect,
                     echo_clients, echo_roundtrip, fail, free_port, make_pool,
                     parse_addr, read_until_closed, run_clients)


def _run_echo(ctx, srv, n_conns, budget, timeout, addrs=None, barrier=False, **kw):
    t0 = time.monotonic()
    clients = []
    addrs = addrs or [srv.addr]
    pool = make_pool(ctx.rng)
    per = (n_conns + len(addrs) - 1) // len(addrs)
    for k, addr in enumerate(addrs):
        clients += echo_clients(addr, ctx.rng, per, budget // len(addrs), pool=pool,
                                prefix=f"a{k}.conn", **kw)
    total = sum(c.send_total for c in clients)
    stats = {}
    errors = run_clients(clients, timeout * ctx.factor, barrier=barrier, stats=stats)
    dt = time.monotonic() - t0
    ctx.log(f"{len(clients)} conns (peak {stats['peak_open']} open), {total / 1e6:.1f} MB each way "
            f"in {dt:.1f}s ({2 * total / 1e6 / max(dt, 1e-6):.0f} MB/s)")
    assert_clients_ok(errors, clients)
    check(stats["received"] == total, f"engine bookkeeping: received {stats['received']} of {total}")
    if barrier:
        check(stats["peak_open"] == len(clients),
              f"only {stats['peak_open']} of {len(clients)} connections were open at once")
    srv.assert_alive()
    return total


def test_echo_small(ctx):
    """A quick sanity check before the heavy tests: a few connections."""
    srv = ctx.server(ECHO_LUA, args=["--workers", "2"])
    echo_roundtrip(srv.addr, b"hello\n")
    echo_roundtrip(srv.addr, b"x")
    _run_echo(ctx, srv, 10, 4 << 20, 30)


def test_echo_1000_concurrent(ctx):
    """1000 concurrent connections, log-uniform messages 1 B..1 MiB written
    in random pieces, every byte checked in order."""
    srv = ctx.server(ECHO_LUA, args=["--workers", "2"])
    _run_echo(ctx, srv, 1000, int(200e6 * ctx.volume), 100, barrier=True)


test_echo_1000_concurrent.time_limit = 150


def test_echo_tiny_ring(ctx):
    """--buffers 8 --buffer-size 4096: the provided ring runs dry all the
    time (ENOBUFS); nothing may be lost or reordered."""
    srv = ctx.server(ECHO_LUA, args=["--workers", "2", "--buffers", "8", "--buffer-size", "4096"])
    _run_echo(ctx, srv, 200, int(30e6 * ctx.volume), 60, barrier=True)


def test_echo_tiny_ring_single_worker(ctx):
    """The smallest legal ring, one worker, lockstep and pipelined clients."""
    srv = ctx.server(ECHO_LUA, args=["--workers", "1", "--buffers", "2", "--buffer-size", "512"])
    _run_echo(ctx, srv, 50, int(8e6 * ctx.volume), 60, max_msg=256 << 10)


def test_builtin_echo(ctx):
    """--builtin echo: the C handler, no script."""
    srv = ctx.server(None, builtin="echo", args=["--workers", "2"])
    _run_echo(ctx, srv, 100, int(30e6 * ctx.volume), 60)


def _half_close_clients(ctx, addr):
    pool = make_pool(ctx.rng)
    clients = []
    sizes = [0, 1, 2, 100, 4096, 16385, 100_000, 1 << 20, len(pool)]
    for i, size in enumerate(sizes * 2):
        off = ctx.rng.randrange(0, len(pool) - size + 1)
        data = pool[off:off + size]
        # second round: several messages back to back before the shutdown
        if i >= len(sizes) and size > 10:
            cut = sorted(ctx.rng.sample(range(1, size), 3))
            sends = [data[:cut[0]], data[cut[0]:cut[1]], data[cut[1]:cut[2]], data[cut[2]:]]
        else:
            sends = [data]
        clients.append(StreamClient(f"halfclose{i}({size} B)", addr, sends,
                                    rng=random.Random(ctx.rng.getrandbits(64)),
                                    shut_wr=True, end="eof", pause_prob=0.02))
    return clients


def test_half_close(ctx):
    """Client sends, then shutdown(SHUT_WR): it must get every byte back,
    then EOF."""
    srv = ctx.server(ECHO_LUA, args=["--workers", "2"])
    clients = _half_close_clients(ctx, srv.addr)
    assert_clients_ok(run_clients(clients, 30 * ctx.factor), clients)
    # Blocking variant, the simplest possible client.
    s = connect(srv.addr)
    try:
        s.sendall(b"half-close\n")
        s.shutdown(socket.SHUT_WR)
        data, how = read_until_closed(s, 5 * ctx.factor)
        check(data == b"half-close\n", f"got {data!r} back, want b'half-close\\n'")
        check(how == "eof", f"after the echo the connection ended by {how}, want EOF")
    finally:
        s.close()
    srv.assert_alive()


def test_half_close_builtin(ctx):
    srv = ctx.server(None, builtin="echo", args=["--workers", "2"])
    clients = _half_close_clients(ctx, srv.addr)
    assert_clients_ok(run_clients(clients, 30 * ctx.factor), clients)


def test_unix_and_tcp_listeners(ctx):
    """--listen is repeatable; a unix: listener echoes like a TCP one, and
    each address is logged with "listening on"."""
    path = os.path.join(ctx.tmpdir, "rl.sock")
    tcp = f"tcp://127.0.0.1:{free_port()}"
    srv = ctx.server(ECHO_LUA, listen=[f"unix:{path}", tcp],
                     args=["--workers", "2", "--log-level", "info"])
    echo_roundtrip(parse_addr(f"unix:{path}"), b"over unix\n")
    echo_roundtrip(parse_addr(tcp), b"over tcp\n")
    _run_echo(ctx, srv, 40, int(20e6 * ctx.volume), 60, addrs=srv.addrs)
    listening = [ln for ln in srv.stderr().splitlines() if "listening on" in ln]
    check(any(path in ln for ln in listening),
          f"no 'listening on' line names {path}: {listening}")
    check(any(str(srv.addrs[1][1][1]) in ln for ln in listening),
          f"no 'listening on' line names port {srv.addrs[1][1][1]}: {listening}")


def test_unix_only(ctx):
    path = os.path.join(ctx.tmpdir, "only.sock")
    srv = ctx.server(ECHO_LUA, listen=[f"unix:{path}"], args=["--workers", "1"])
    _run_echo(ctx, srv, 20, int(10e6 * ctx.volume), 60)


def _script_with_listen(ctx, listen_lua):
    path = os.path.join(ctx.tmpdir, f"listen{ctx.rng.randrange(1 << 30)}.lua")
    with open(path, "w") as f:
        f.write("return {\n  listen = %s,\n"
                "  on_data = function(conn, data) conn:send(data) end,\n}\n" % listen_lua)
    return path


def test_script_listen(ctx):
    """The script's listen (string, then list) is used when no --listen is
    given; --listen overrides it."""
    p1 = free_port()
    s1 = ctx.server(_script_with_listen(ctx, f'"tcp://127.0.0.1:{p1}"'), listen=[],
                    probe=[f"tcp://127.0.0.1:{p1}"])
    echo_roundtrip((socket.AF_INET, ("127.0.0.1", p1)), b"string listen\n")
    s1.stop()

    p2 = free_port()
    upath = os.path.join(ctx.tmpdir, "list.sock")
    s2 = ctx.server(_script_with_listen(ctx, f'{{ "tcp://127.0.0.1:{p2}", "unix:{upath}" }}'),
                    listen=[], probe=[f"tcp://127.0.0.1:{p2}", f"unix:{upath}"],
                    args=["--workers", "1"])   # unix + 2 workers: see unix_listener_with_two_workers_starts
    echo_roundtrip((socket.AF_INET, ("127.0.0.1", p2)), b"list listen tcp\n")
    echo_roundtrip((socket.AF_UNIX, upath), b"list listen unix\n")
    s2.stop()

    p3, p4 = free_port(), free_port()
    s3 = ctx.server(_script_with_listen(ctx, f'"tcp://127.0.0.1:{p3}"'),
                    listen=[f"tcp://127.0.0.1:{p4}"])
    echo_roundtrip((socket.AF_INET, ("127.0.0.1", p4)), b"override\n")
    try:
        c = connect((socket.AF_INET, ("127.0.0.1", p3)), timeout=2)
        c.close()
        fail(f"--listen should override the script's listen, but port {p3} from the script accepts")
    except ConnectionRefusedError:
        pass


def test_echo_config_matrix(ctx):
    """The echo under a spread of worker counts and ring geometries."""
    configs = [
        ["--workers", "1", "--buffers", "16", "--buffer-size", "1k"],
        ["--workers", "3", "--buffers", "64", "--buffer-size", "2048"],
        ["--workers", "4", "--buffers", "4096", "--buffer-size", "64k"],
        ["--workers", "2", "--buffers", "32", "--buffer-size", "1m"],
    ]
    for args in configs:
        srv = ctx.server(ECHO_LUA, args=args)
        try:
            _run_echo(ctx, srv, 100, int(20e6 * ctx.volume), 60)
        except AssertionError as e:
            fail(f"with {' '.join(args)}: {e}")
        srv.stop()


def test_ipv6_listener(ctx):
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
        probe.close()
    except OSError:
        ctx.note("no IPv6 loopback here; ipv6_listener skipped")
        return
    srv = ctx.server(ECHO_LUA, listen=[f"tcp://[::1]:{port}"], args=["--workers", "2"])
    echo_roundtrip(srv.addr, b"over ipv6\n")
    _run_echo(ctx, srv, 20, int(5e6 * ctx.volume), 30)
