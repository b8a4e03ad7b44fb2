"""Lua handlers: errors, consumed-byte accounting, stale slices and the
connection API (spec items 5, 9, 12)."""

import os
import random
import re
import socket
import time

from harness import (REPO, SCRIPTS, StreamClient, assert_clients_ok, check, connect,
                     echo_clients, echo_roundtrip, fail, make_pool, read_until_closed,
                     recv_exact, recv_line, run_clients, wait_for)


def _marked_line(script, marker):
    with open(os.path.join(REPO, script)) as f:
        for n, ln in enumerate(f, 1):
            if marker in ln:
                return n
    raise AssertionError(f"{marker} not found in {script}")


# --------------------------------------------------------------------------
# 5. handler errors

def test_handler_error_closes_only_that_connection(ctx):
    script = f"{SCRIPTS}/boom.lua"
    boom_line = _marked_line(script, "BOOM-LINE")
    oops_line = _marked_line(script, "OOPS-LINE")
    srv = ctx.server(script, args=["--workers", "2"])
    pool = make_pool(ctx.rng, no_b=True)

    # Normal echo traffic for the whole test...
    clients = echo_clients(srv.addr, ctx.rng, 60, int(40e6 * ctx.volume), max_msg=512 << 10,
                           pool=pool, prefix="normal", pause_prob=0.1, pause_s=(0.0, 0.01))
    # ...and, in the middle of it, connections that make on_data raise: some
    # at once, some after a first echoed message.
    bad = []
    for i in range(12):
        trigger = b"boom" if i % 2 == 0 else b"oops"
        first = bytes(pool[i * 1000:i * 1000 + 500]) if i >= 6 else b""
        sends = ([first] if first else []) + [trigger + b" and some more bytes\n"]
        gates = [0, len(first)] if first else [0]
        bad.append(StreamClient(f"{trigger.decode()}{i}", srv.addr, sends, expected=[first],
                                gates=gates, end="server_close", expect_min=len(first),
                                start_delay=0.2 + 0.1 * i,
                                rng=random.Random(ctx.rng.getrandbits(64)),
                                piece=(1 << 20, 1 << 20)))
    errors = run_clients(clients + bad, 60 * ctx.factor)
    assert_clients_ok(errors, clients + bad)
    srv.assert_alive()
    echo_roundtrip(srv.addr, b"still alive\n")

    log = srv.stderr()
    check(re.search(rf"boom\.lua:{boom_line}\b", log),
          f"no log line names boom.lua:{boom_line} (the error() call); {srv.stderr_tail()}")
    check("boom requested by the client" in log,
          f"the error message is not logged; {srv.stderr_tail()}")
    check(re.search(rf"boom\.lua:{oops_line}\b", log),
          f"no log line names boom.lua:{oops_line} (indexing nil); {srv.stderr_tail()}")


# --------------------------------------------------------------------------
# 9. consumed bytes: the line protocol

ALPHABET = bytes(range(ord("a"), ord("z") + 1)) + b"012345"
_TABLE = bytes(ALPHABET[i % len(ALPHABET)] for i in range(256))


def _text(rng, n):
    return rng.randbytes(n).translate(_TABLE)


def _lines_plan(rng, n_lines, big=0, small_only=False):
    """A stream of lines and the expected answers."""
    bodies = []
    for _ in range(n_lines):
        r = rng.random() * (0.8 if small_only else 1.0)
        if r < 0.1:
            n = 0
        elif r < 0.2:
            n = 1
        elif r < 0.8:
            n = rng.randint(2, 200)
        else:
            n = rng.randint(200, 20000)
        bodies.append(_text(rng, n))
    for _ in range(big):
        bodies.insert(rng.randrange(len(bodies) + 1), _text(rng, 100_000 + rng.randrange(5000)))
    stream = b"".join(b + b"\n" for b in bodies)
    answer = b"".join(b[::-1].upper() + b"\n" for b in bodies)
    return stream, answer


def test_lines_consumed_bytes(ctx):
    """on_data returns the bytes consumed; partial lines are offered again
    contiguous with the next bytes, whatever the split."""
    # Small buffers so 100 KB lines span many of them.
    srv = ctx.server(f"{SCRIPTS}/lines.lua",
                     args=["--workers", "2", "--buffer-size", "4k", "--max-unconsumed", "4194304"])
    rng = ctx.rng
    clients = []
    # One byte at a time, with a pause after every byte so each arrives alone.
    small = [_text(rng, rng.choice([0, 0, 1, 1, 2, 5, 17, 40])) for _ in range(15)]
    s2 = b"".join(b + b"\n" for b in small)
    a2 = b"".join(b[::-1].upper() + b"\n" for b in small)
    clients.append(StreamClient("bytewise", srv.addr, [s2], expected=[a2], piece=(1, 1),
                                pause_prob=1.0, pause_s=(0.0005, 0.002),
                                rng=random.Random(rng.getrandbits(64))))
    # Random splits, various piece sizes, with and without big lines.
    for i in range(24):
        hi = [16, 512, 8192, 65536][i % 4]
        if hi == 16:        # tiny pieces: keep the volume small
            s, a = _lines_plan(rng, rng.randint(5, 30), small_only=True)
        else:
            s, a = _lines_plan(rng, rng.randint(5, 120), big=(2 if i % 3 == 0 else 0))
        clients.append(StreamClient(f"lines{i}(pieces<= {hi})", srv.addr, [s], expected=[a],
                                    piece=(1, hi), pause_prob=0.2, pause_s=(0.0, 0.003),
                                    rng=random.Random(rng.getrandbits(64))))
    # Big lines only, sent in big writes.
    s, a = _lines_plan(rng, 0, big=8)
    clients.append(StreamClient("biglines", srv.addr, [s], expected=[a], piece=(1 << 16, 1 << 18),
                                rng=random.Random(rng.getrandbits(64))))
    # Lockstep: each line waits for the previous answer; the last line is
    # split so that its newline arrives in a separate write.
    bodies = [_text(rng, rng.choice([0, 1, 7, 300, 5000, 100_000])) for _ in range(20)]
    sends, gates, exp, acc = [], [], [], 0
    for b in bodies:
        cut = rng.randint(0, len(b))
        for part in (b[:cut], b[cut:] + b"\n"):
            sends.append(part)
            gates.append(acc)
        exp.append(b[::-1].upper() + b"\n")
        acc += len(exp[-1])
    clients.append(StreamClient("lockstep", srv.addr, sends, expected=exp, gates=gates,
                                piece=(1, 4096), pause_prob=0.3,
                                rng=random.Random(rng.getrandbits(64))))
    # A trailing partial line is never answered; the half-closed client gets
    # the complete lines' answers, then EOF.
    clients.append(StreamClient("partial-tail", srv.addr, [b"abc\nde\nunfinished"],
                                expected=[b"CBA\nED\n"], shut_wr=True, end="eof",
                                rng=random.Random(rng.getrandbits(64))))
    errors = run_clients(clients, 60 * ctx.factor)
    assert_clients_ok(errors, clients)
    srv.assert_alive()


# --------------------------------------------------------------------------
# 12. stale slices

STALE_MSG = "slice used after its handler returned"


def test_stale_slice_raises(ctx):
    srv = ctx.server(f"{SCRIPTS}/retain.lua", args=["--workers", "2"])
    bystander = connect(srv.addr)
    problems = []
    try:
        echo_roundtrip(srv.addr, b"before\n", sock=bystander)
        cases = [("keep", op) for op in ["len", "byte", "sub", "find", "tostring", "send"]]
        cases += [("keepsub", "len"), ("keepsub", "tostring"), ("keepsub", "send")]
        for keep, op in cases:
            before = srv.stderr().count(STALE_MSG)
            s = connect(srv.addr)
            if keep != "keep":
                op = f"{keep}:{op}"
            try:
                s.sendall(keep.encode())
                got = recv_exact(s, 5, 5 * ctx.factor, what="'kept' reply")
                check(got == b"kept\n", f"[{op}] want b'kept\\n', got {got!r}")
                s.sendall(op.split(":")[-1].encode() + b"\n")
                data, how = read_until_closed(s, 5 * ctx.factor)
            finally:
                s.close()
            if b"survived" in data:
                problems.append(f"[{op}] using the stale slice did not raise (got {data!r})")
                continue
            if how == "timeout":
                problems.append(f"[{op}] connection not closed within {5 * ctx.factor:.0f}s "
                                f"(got {data!r})")
            logged = wait_for(lambda: srv.stderr().count(STALE_MSG) > before, 3 * ctx.factor)
            if not logged:
                problems.append(f"[{op}] no {STALE_MSG!r} error logged")
            else:
                line = [ln for ln in srv.stderr().splitlines() if STALE_MSG in ln][before]
                if not re.search(r"retain\.lua:\d+", line):
                    problems.append(f"[{op}] the logged error does not give retain.lua:LINE: {line!r}")
            # The others are unaffected.
            echo_roundtrip(srv.addr, f"after {op}\n".encode(), sock=bystander)
        echo_roundtrip(srv.addr, b"fresh connection\n")
    finally:
        bystander.close()
    srv.assert_alive()
    if problems:
        fail("\n".join(problems) + f"\n{srv.stderr_tail()}")


# --------------------------------------------------------------------------
# The connection API: on_open, conn.id, conn.peer, conn.state, conn:close(),
# init, on_close.

def _stats(sock, timeout):
    sock.sendall(b"stats\n")
    ln = recv_line(sock, timeout, what="stats reply").decode()
    m = re.match(r"stats opens=(\d+) closes=(\d+) inits=(\d+) reason=(\S*)", ln)
    check(m, f"bad stats reply {ln!r}")
    return int(m[1]), int(m[2]), int(m[3]), m[4]


def test_batch_clock(ctx):
    """ringline.unix_ms/now_ms: the time the batch was polled, fresh after
    an idle wait, constant within a handler, moving between batches."""
    srv = ctx.server(f"{SCRIPTS}/api.lua", args=["--workers", "1"])
    t = 5 * ctx.factor
    s = connect(srv.addr)
    try:
        recv_line(s, t, what="greeting")
        samples = []
        for _ in range(3):
            time.sleep(0.3)          # idle: the worker waits, then reads the clock
            before = time.time() * 1000
            s.sendall(b"time\n")
            ln = recv_line(s, t, what="time reply").decode()
            after = time.time() * 1000
            m = re.match(r"time unix=(\d+) mono=([\d.]+) same=([01])\n", ln)
            check(m, f"bad time reply {ln!r}")
            unix, mono, same = int(m[1]), float(m[2]), m[3]
            check(same == "1", "two clock reads in one handler differ")
            # Whole ms, truncated: within [before - 1, after].
            check(before - 1 <= unix <= after,
                  f"unix_ms {unix} not within [{before:.0f}, {after:.0f}]: stale?")
            samples.append(mono)
        d1, d2 = samples[1] - samples[0], samples[2] - samples[1]
        check(250 <= d1 <= 3000 * ctx.factor and 250 <= d2 <= 3000 * ctx.factor,
              f"now_ms moved {d1:.1f} and {d2:.1f} ms across 300 ms sleeps")
    finally:
        s.close()


def test_connection_api(ctx):
    srv = ctx.server(f"{SCRIPTS}/api.lua", args=["--workers", "1"])
    t = 5 * ctx.factor
    a = connect(srv.addr)
    b = connect(srv.addr)
    try:
        hello_a = recv_line(a, t, what="greeting from on_open").decode()
        hello_b = recv_line(b, t, what="greeting from on_open").decode()
        ma = re.match(r"hello id=(\S+) peer=(\S+)\n", hello_a)
        mb = re.match(r"hello id=(\S+) peer=(\S+)\n", hello_b)
        check(ma and mb, f"bad greetings {hello_a!r} {hello_b!r}")
        check(ma[1] != mb[1], f"two open connections share conn.id {ma[1]}")
        port_a = a.getsockname()[1]
        check(ma[2].endswith(f":{port_a}") and "127.0.0.1" in ma[2],
              f"conn.peer {ma[2]!r} is not the client's address 127.0.0.1:{port_a}")

        # conn.state is per connection; several commands in one write.
        a.sendall(b"count\ncount\ncount\n")
        got = recv_exact(a, len(b"count=1\ncount=2\ncount=3\n"), t, what="count replies")
        check(got == b"count=1\ncount=2\ncount=3\n", f"count replies {got!r}")
        b.sendall(b"count\n")
        check(recv_line(b, t) == b"count=1\n", "conn.state shared between connections")
        a.sendall(b"id\n")
        check(recv_line(a, t).decode() == f"id={ma[1]}\n", "conn.id changed between calls")

        # Baseline once the readiness probe's close has been seen.
        base = wait_for(lambda: (lambda s: s if s[0] - s[1] == 2 else None)(_stats(a, t)),
                        3 * ctx.factor)
        check(base, f"stats never showed exactly 2 open connections: {_stats(a, t)}")
        opens0, closes0, inits, _ = base
        check(inits == 1, f"init() ran {inits} times in a single worker, want 1")

        # conn:close() after a send: the reply arrives, then EOF; on_close runs.
        b.sendall(b"close\n")
        data, how = read_until_closed(b, t)
        check(data == b"bye\n", f"want b'bye\\n' before the close, got {data!r}")
        check(how == "eof", f"conn:close() ended the connection by {how}, want EOF")
        st = wait_for(lambda: (lambda s: s if s[1] == closes0 + 1 else None)(_stats(a, t)),
                      3 * ctx.factor)
        check(st, f"on_close not called after conn:close(): {_stats(a, t)}")

        # Graceful close with 1 MiB still queued: every byte, then EOF.
        c = connect(srv.addr, rcvbuf=8192)
        try:
            recv_line(c, t, what="greeting")
            c.sendall(b"bigclose\n")
            time.sleep(0.2)          # let the server queue and close first
            data, how = read_until_closed(c, 10 * ctx.factor)
        finally:
            c.close()
        want = b"x" * (1 << 20) + b"END\n"
        check(len(data) == len(want) and data == want,
              f"bigclose: got {len(data)} bytes (want {len(want)}), tail {data[-8:]!r}")
        check(how == "eof", f"bigclose ended by {how}, want EOF")

        # The peer closing also reaches on_close.
        d = connect(srv.addr)
        recv_line(d, t)
        d.close()
        st = wait_for(lambda: (lambda s: s if s[1] >= closes0 + 3 else None)(_stats(a, t)),
                      3 * ctx.factor)
        check(st, f"on_close not called for every closed connection: {_stats(a, t)} "
                  f"(baseline opens={opens0} closes={closes0})")
        check(st[0] == opens0 + 2, f"on_open count {st[0]}, want {opens0 + 2}")
    finally:
        a.close()
        b.close()
    srv.assert_alive()


def test_lines_tiny_ring(ctx):
    """The line protocol with a ring that is always empty: residues and
    re-offers under constant ENOBUFS."""
    srv = ctx.server(f"{SCRIPTS}/lines.lua",
                     args=["--workers", "2", "--buffers", "8", "--buffer-size", "4096",
                           "--max-unconsumed", "1048576"])
    rng = ctx.rng
    clients = []
    for i in range(40):
        s, a = _lines_plan(rng, rng.randint(5, 80), big=(1 if i % 4 == 0 else 0))
        clients.append(StreamClient(f"lines{i}", srv.addr, [s], expected=[a],
                                    piece=(1, [64, 4096, 65536][i % 3]), pause_prob=0.1,
                                    rng=random.Random(rng.getrandbits(64))))
    assert_clients_ok(run_clients(clients, 60 * ctx.factor), clients)
    srv.assert_alive()


def test_max_unconsumed_closes_connection(ctx):
    """A connection whose unconsumed bytes pass --max-unconsumed is closed;
    others, and lines under the limit, are fine."""
    srv = ctx.server(f"{SCRIPTS}/lines.lua",
                     args=["--workers", "2", "--max-unconsumed", "65536"])
    t = 5 * ctx.factor
    ok = connect(srv.addr)
    try:
        line = _text(ctx.rng, 30000)
        ok.sendall(line + b"\n")
        got = recv_exact(ok, len(line) + 1, t, what="answer to a 30 KB line")
        check(got == line[::-1].upper() + b"\n", "wrong answer to a 30 KB line")

        hog = connect(srv.addr)
        try:
            try:
                hog.sendall(_text(ctx.rng, 300_000))     # no newline, ever
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                pass
            data, how = read_until_closed(hog, t)
            check(how in ("eof", "reset"),
                  f"300 KB without a newline (limit 64 KB): connection not closed within {t:.0f}s")
            check(not data, f"unexpected answer {data[:40]!r}")
        finally:
            hog.close()
        ok.sendall(b"still\n")
        check(recv_exact(ok, 6, t) == b"LLITS\n", "other connection disturbed")
    finally:
        ok.close()
    srv.assert_alive()


def test_errors_in_on_open_and_on_close(ctx):
    script = f"{SCRIPTS}/hooks_error.lua"
    open_line = _marked_line(script, "OPEN-LINE")
    close_line = _marked_line(script, "CLOSE-LINE")
    srv = ctx.server(script, args=["--workers", "1"])
    t = 5 * ctx.factor
    greeted, refused = [], 0
    try:
        for i in range(6):
            s = connect(srv.addr)
            data, how = b"", None
            s.settimeout(t)
            try:
                data = s.recv(8)
            except ConnectionResetError:
                data = b""
            if data == b"":
                refused += 1
                s.close()
                continue
            check(data == b"welcome\n"[:len(data)], f"connection {i}: unexpected greeting {data!r}")
            if len(data) < 8:
                data += recv_exact(s, 8 - len(data), t)
            greeted.append(s)
        check(refused >= 2 and len(greeted) >= 2,
              f"every second on_open raises: expected about half the connections closed at once, "
              f"got {refused} closed and {len(greeted)} greeted")
        for k, s in enumerate(greeted):
            echo_roundtrip(srv.addr, f"greeted {k}\n".encode(), sock=s)
        check(re.search(rf"hooks_error\.lua:{open_line}\b", srv.stderr()),
              f"on_open error not logged with hooks_error.lua:{open_line}; {srv.stderr_tail()}")
        # on_close raising: logged, nothing else breaks.
        c = greeted.pop()
        c.sendall(b"closeerr\n")
        data, how = read_until_closed(c, t)
        c.close()
        check(data == b"closing\n" and how == "eof", f"closeerr: got {data!r}, {how}")
        check(wait_for(lambda: re.search(rf"hooks_error\.lua:{close_line}\b", srv.stderr()),
                       3 * ctx.factor),
              f"on_close error not logged with hooks_error.lua:{close_line}; {srv.stderr_tail()}")
        for k, s in enumerate(greeted):
            echo_roundtrip(srv.addr, f"still {k}\n".encode(), sock=s)
        srv.assert_alive()
    finally:
        for s in greeted:
            s.close()


def _checksum(b):
    h = 0
    for x in b:
        h = (h * 31 + x) % 2147483647
    return h


def test_slice_api_matches_lua_strings(ctx):
    """#, :byte, :sub, :find and tostring of slices (and of sub-slices)
    agree with Lua strings, for lines inside one buffer and spanning many."""
    for bufsize in ("512", "16k"):
        srv = ctx.server(f"{SCRIPTS}/slice_check.lua",
                         args=["--workers", "2", "--buffer-size", bufsize])
        rng = ctx.rng
        clients = []
        for i in range(12):
            sizes = [0, 1, 2, 5, 6, 7, 30, 47, 48, 49, 200, 511, 512, 513]
            if i % 3:       # not for the 7-byte pieces: keep that one quick
                sizes += [1500, 5000, 40000]
            bodies = [_text(rng, rng.choice(sizes)) for _ in range(rng.randint(3, 25))]
            stream = b"".join(b + b"\n" for b in bodies)
            answer = b"".join(f"ok {len(b)} {_checksum(b)}\n".encode() for b in bodies)
            clients.append(StreamClient(f"slices{i}/bufsize {bufsize}", srv.addr, [stream],
                                        expected=[answer], piece=(1, [7, 700, 70000][i % 3]),
                                        pause_prob=0.2, rng=random.Random(rng.getrandbits(64))))
        errors = run_clients(clients, 60 * ctx.factor)
        assert_clients_ok(errors, clients)
        srv.assert_alive()
        srv.stop()
