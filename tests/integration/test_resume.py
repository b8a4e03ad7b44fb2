"""conn:pause() / conn:resume() and unconsumed bytes (tests/scripts/resume.lua).

Bytes a handler leaves unconsumed while its connection is paused are offered
to on_data again when the connection is resumed, at once: the peer has sent
everything and waits for the answer.  In order with anything it sends later,
and before its EOF.  Only a resume does that: a handler that leaves bytes
without being paused gets them again only with the next bytes.
"""

import os
import random
import re
import shutil
import signal
import socket
import threading
import time

from harness import (EnvCtx, REPO, SCRIPTS, Server, check, connect, fail, read_until_closed, recv_exact,
                     wait_for)

RESUME_LUA = f"{SCRIPTS}/resume.lua"


def _expect(sock, want, timeout, what):
    got = recv_exact(sock, len(want), timeout, what=what)
    check(got == want, f"{what}: expected {want!r}, got {got!r}")
    return got


def _server(ctx, script, env=None, **kw):
    srv = Server(EnvCtx(ctx, env or {}), script=script, **kw)
    ctx.servers.append(srv)
    srv.start()
    return srv


def _quiet(sock, seconds):
    """Nothing arrives for that long."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(4096)
    except socket.timeout:
        return b""
    return data or b"<EOF>"


def test_resume_reoffers_held_bytes(ctx):
    """A request, then nothing: "pause 200" leaves two whole lines
    unconsumed; the timer's resume must get them answered without another
    byte from the client.  Also: bytes sent while paused come after the held
    ones; a pause inside a re-offer holds the rest again; a resume with
    nothing held offers nothing (no empty on_data)."""
    srv = ctx.server(RESUME_LUA, args=["--workers", "1"])
    t = 5 * ctx.factor
    s = connect(srv.addr)
    try:
        t0 = time.monotonic()
        s.sendall(b"pause 200\nhello\nworld\n")
        _expect(s, b"paused\n", t, "the answer to pause")
        _expect(s, b"> hello\n> world\n", t,
                "the lines left unconsumed while paused, after the resume (the client sent "
                "nothing more)")
        dt = time.monotonic() - t0
        check(dt >= 0.18, f"held lines answered after {dt:.3f}s, before the 200 ms resume")
        ctx.log(f"held lines answered {dt:.3f}s after the request")
        s.sendall(b"calls\nempty\n")
        got = recv_exact(s, len(b"calls N\nempty 0\n"), t, what="calls/empty")
        m = re.match(rb"calls (\d+)\nempty (\d+)\n$", got)
        check(m and int(m.group(2)) == 0, f"expected 'calls N' and 'empty 0', got {got!r}")
        # The request, one re-offer, this one; one more if bytes were in flight.
        check(2 < int(m.group(1)) <= 4, f"on_data called {m.group(1)} times for a request, a "
                                         f"pause and a resume")

        # Held bytes first, then what came while paused.
        s.sendall(b"pause 200\nx\n")
        _expect(s, b"paused\n", t, "the answer to pause")
        time.sleep(0.05)
        s.sendall(b"y\n")
        _expect(s, b"> x\n> y\n", t, "held bytes, then the bytes sent while paused")

        # Paused again during the re-offer: the rest is held again, and
        # offered at the next resume.
        t0 = time.monotonic()
        s.sendall(b"pause 60\na\npause 60\nb\nc\n")
        _expect(s, b"paused\n> a\npaused\n> b\n> c\n", t,
                "two pauses in one request, each holding the rest")
        check(time.monotonic() - t0 >= 0.1, "two 60 ms pauses took less than 100 ms")

        # Nothing held: the resume offers nothing.
        s.sendall(b"pause 50\n")
        _expect(s, b"paused\n", t, "the answer to pause")
        time.sleep(0.25)
        s.sendall(b"empty\n")
        _expect(s, b"empty 0\n", t, "no empty offer after resuming with nothing held")
    finally:
        s.close()
    srv.assert_alive()


def test_resume_only_resume_reoffers(ctx):
    """No busy loop: a handler that leaves bytes without being paused (a
    partial line; or pause+resume inside the same call) is not offered them
    again until more bytes arrive.  A resume followed at once by a pause
    offers nothing; the next resume does."""
    srv = ctx.server(RESUME_LUA, args=["--workers", "1"])
    t = 5 * ctx.factor
    s = connect(srv.addr)
    try:
        s.sendall(b"flip\nx\n")
        _expect(s, b"flipped\n", t, "the answer to flip")
        extra = _quiet(s, 0.3)
        check(not extra, f"'x' was answered ({extra!r}) without new bytes, though the handler "
                         f"was not paused when it left it")
        s.sendall(b"calls\n")
        _expect(s, b"> x\ncalls 2\n", t, "the line left by flip, with the next bytes")

        s.sendall(b"abc")
        extra = _quiet(s, 0.3)
        check(not extra, f"a partial line got an answer: {extra!r}")
        s.sendall(b"\ncalls\n")
        _expect(s, b"> abc\ncalls 4\n", t,
                "a partial line completed (and on_data called once per arrival: no loop)")

        t0 = time.monotonic()
        s.sendall(b"repause 150\nq\n")
        _expect(s, b"paused\n", t, "the answer to repause")
        _expect(s, b"> q\n", t, "the held line after the second resume")
        dt = time.monotonic() - t0
        check(dt >= 0.28, f"held line answered after {dt:.3f}s: offered at the resume that "
                          f"was followed at once by a pause (want after the second, 300 ms)")
        s.sendall(b"calls\n")
        got = recv_exact(s, len(b"calls N\n"), t, what="calls")
        n = int(got.split()[1])
        check(n <= 8, f"on_data called {n} times in all (4 before repause): a re-offer loop?")
    finally:
        s.close()
    srv.assert_alive()


def test_resume_eof_after_held_bytes(ctx):
    """The client sends its request and its EOF at once.  The EOF is
    reported (on_eof) or acted on (no on_eof: close) only after the held
    bytes were offered after the resume.  A connection closed before the
    resume, or by the same callback right after it, gets no re-offer and
    no on_eof."""
    t = 5 * ctx.factor
    for no_eof in (False, True):
        srv = _server(ctx, RESUME_LUA, env={"RL_TEST_NO_EOF": "1" if no_eof else "0"},
                      args=["--workers", "1"], name=f"eof{int(no_eof)}")
        tail = b"" if no_eof else b"eof after %d lines\n"
        for req, want in [
            (b"pause 150\nlast\n", b"paused\n> last\n" + (tail % 2 if tail else b"")),
            (b"pause 150\nl1\nl2\nl3\n", b"paused\n> l1\n> l2\n> l3\n" + (tail % 4 if tail else b"")),
            (b"pause 150\npartial", b"paused\n" + (tail % 1 if tail else b"")),
            (b"pause 50\na\npause 50\nb\n", b"paused\n> a\npaused\n> b\n" + (tail % 4 if tail else b"")),
            (b"drop 100\nlost\n", b"paused\n"),
            (b"rclose 100\nlost\n", b"paused\n"),
        ]:
            s = connect(srv.addr)
            try:
                s.sendall(req)
                s.shutdown(socket.SHUT_WR)
                got, how = read_until_closed(s, t)
            finally:
                s.close()
            mode = "without on_eof" if no_eof else "with on_eof"
            check(got == want and how == "eof",
                  f"{mode}: {req!r} then EOF: expected {want!r} then EOF, got {got!r} ({how})")
        srv.assert_alive()


def test_resume_reoffer_after_reload(ctx):
    """Hot reload while bytes are held: the re-offer after the resume goes to
    the new version's on_data."""
    d = os.path.join(ctx.tmpdir, "scripts")
    os.makedirs(d)
    path = os.path.join(d, "resume.lua")
    shutil.copy(os.path.join(REPO, RESUME_LUA), path)
    srv = ctx.server(path, args=["--workers", "1"])
    t = 5 * ctx.factor
    s = connect(srv.addr)
    try:
        s.sendall(b"pause 1000\nr\n")
        _expect(s, b"paused\n", t, "the answer to pause")
        with open(path) as f:
            text = f.read()
        new = re.sub(r'^local PREFIX = ">" -- @PREFIX$', 'local PREFIX = "v2>" -- @PREFIX',
                     text, flags=re.M)
        check(new != text, "test setup: @PREFIX line not found in resume.lua")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(new)
        os.rename(tmp, path)
        srv.send_signal(signal.SIGHUP)
        check(wait_for(lambda: "switched" in srv.stderr(), 0.8),
              f"the reload did not finish within 0.8 s: {srv.stderr_tail()}")
        _expect(s, b"v2> r\n", t, "the held line, offered after the reload")
        s.sendall(b"again\n")
        _expect(s, b"v2> again\n", t, "new bytes after the reload")
    finally:
        s.close()
    srv.assert_alive()


def test_resume_many_connections(ctx):
    """200 connections on 2 workers, each a random sequence of lines and
    pauses (0-80 ms), sent in random pieces with random gaps, then EOF:
    every answer arrives, in order, then "eof after N lines"."""
    srv = ctx.server(RESUME_LUA, args=["--workers", "2", "--buffers", "64",
                                       "--buffer-size", "4k"])
    rng = random.Random(ctx.rng.getrandbits(64))
    plans = []
    for i in range(200):
        req, want, lines = [], [], 0
        for j in range(rng.randint(1, 12)):
            lines += 1
            if rng.random() < 0.3:
                req.append(b"pause %d\n" % rng.randint(0, 80))
                want.append(b"paused\n")
            else:
                word = b"c%d-%d-" % (i, j) + b"w" * rng.choice([1, 10, 300, 5000])
                req.append(word + b"\n")
                want.append(b"> " + word + b"\n")
        data = b"".join(req)
        want.append(b"eof after %d lines\n" % lines)
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 4))))
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        plans.append((pieces, b"".join(want), random.Random(rng.getrandbits(64))))
    errors = []
    lock = threading.Lock()
    t = 20 * ctx.factor

    def run(k):
        pieces, want, r = plans[k]
        try:
            s = connect(srv.addr, t)
        except OSError as e:
            with lock:
                errors.append(f"conn {k}: connect: {e}")
            return
        try:
            for p in pieces:
                s.sendall(p)
                if r.random() < 0.5:
                    time.sleep(r.uniform(0, 0.03))
            s.shutdown(socket.SHUT_WR)
            got, how = read_until_closed(s, t)
        except OSError as e:
            got, how = b"", f"error {e}"
        finally:
            s.close()
        if got != want or how != "eof":
            k0 = next((j for j in range(min(len(got), len(want))) if got[j] != want[j]),
                      min(len(got), len(want)))
            with lock:
                errors.append(f"conn {k}: {how}, got {len(got)} of {len(want)} bytes, first "
                              f"difference at {k0}: got {got[k0:k0 + 40]!r}, want "
                              f"{want[k0:k0 + 40]!r}")

    threads = []
    for k in range(len(plans)):
        th = threading.Thread(target=run, args=(k,), daemon=True)
        threads.append(th)
        th.start()
    for th in threads:
        th.join(t + 10)
    if any(th.is_alive() for th in threads):
        fail("client threads did not finish")
    check(not errors, f"{len(errors)} of {len(plans)} connections failed:\n  " +
          "\n  ".join(errors[:6]))
    srv.assert_alive()


test_resume_many_connections.time_limit = 90
