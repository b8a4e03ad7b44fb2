"""conn:send_file: file ranges queued behind other sends, read by the
worker a buffer at a time, answered byte-exact and in order; memory does
not follow the file's size; a file cut short ends the connection; fds go
back when a download is abandoned; opens stay beneath the root."""

import hashlib
import os
import random
import socket
import time

from harness import SCRIPTS, EnvCtx, Server, check, connect, recv_exact, rss_kb, wait_for

SENDFILE_LUA = f"{SCRIPTS}/sendfile.lua"


def _server(ctx, root, args=()):
    s = Server(EnvCtx(ctx, {"RINGLINE_TEST_ROOT": root}), script=SENDFILE_LUA,
               args=["--workers", "1"] + list(args))
    ctx.servers.append(s)
    s.start()
    return s


def _root(ctx, files):
    root = os.path.join(ctx.tmpdir, "files")
    os.makedirs(root, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    return root


def _answer(data, off, n):
    return b"HDR %d\n" % n + data[off:off + n] + b"END\n"


def _open_files(srv, name):
    """How many of the server's fds are open on the file called name."""
    n = 0
    for fd in os.listdir(f"/proc/{srv.pid}/fd"):
        try:
            n += os.readlink(f"/proc/{srv.pid}/fd/{fd}").endswith("/" + name)
        except OSError:
            pass
    return n


def test_sendfile_ranges_pipelined_in_order(ctx):
    """Ranges of a 3 MiB file (empty, one byte, across 64 KiB reads, to
    the end) pipelined on one connection, with other answers between them:
    every byte in order."""
    rng = random.Random(ctx.seed)
    data = rng.randbytes(3 << 20)
    root = _root(ctx, {"f.bin": data, "empty": b""})
    srv = _server(ctx, root)
    reqs = [(0, 0), (0, 1), (65535, 2), (1, 65536), (100, 3 << 19), (0, len(data)),
            (len(data) - 7, 7)]
    reqs += [(rng.randrange(len(data)), 0) for _ in range(3)]
    reqs = [(o, min(n, len(data) - o)) for o, n in reqs]
    for _ in range(40):
        o = rng.randrange(len(data))
        reqs.append((o, rng.randrange(len(data) - o + 1) // rng.choice([1, 16, 4096])))
    s = connect(srv.addr)
    s.sendall(b"".join(b"f.bin %d %d\n" % r for r in reqs) + b"empty 0 0\n")
    for i, (o, n) in enumerate(reqs):
        want = _answer(data, o, n)
        got = recv_exact(s, len(want), timeout=10 * ctx.factor, what=f"range {i} ({o}, {n})")
        check(got == want, f"range {i} ({o}, {n}) differs")
    check(recv_exact(s, 10, what="empty") == b"HDR 0\nEND\n", "the empty file")
    s.close()
    srv.assert_alive()


def test_sendfile_open_stays_beneath_root(ctx):
    """".." , absolute paths and symlinks leading out are refused by the
    kernel (EXDEV); a symlink inside the root is followed."""
    root = _root(ctx, {"in.txt": b"inside\n"})
    outside = os.path.join(ctx.tmpdir, "secret.txt")
    with open(outside, "wb") as f:
        f.write(b"secret\n")
    os.symlink(outside, os.path.join(root, "escape"))
    os.symlink("in.txt", os.path.join(root, "alias"))
    os.makedirs(os.path.join(root, "sub"))
    srv = _server(ctx, root)
    s = connect(srv.addr)
    s.sendall(b"../secret.txt 0 7\n" + outside.encode() + b" 0 7\nescape 0 7\n"
              b"sub/../in.txt 0 7\nalias 0 7\nmissing 0 1\n")
    want = (b"ERR 18\nERR 18\nERR 18\nHDR 7\ninside\nEND\nHDR 7\ninside\nEND\n"
            b"ERR 2\n")
    got = recv_exact(s, len(want), what="answers")
    check(got == want, f"answers: {got!r}")
    s.close()


def test_sendfile_slow_reader_memory_bounded(ctx):
    """64 MiB queued for a client that reads nothing: the server holds one
    read buffer, not the file; a fresh client is served meanwhile; then
    every byte arrives."""
    size = int((64 << 20) * ctx.volume)
    data = random.Random(ctx.seed ^ 5).randbytes(1 << 20) * (size >> 20)
    root = _root(ctx, {"big.bin": data, "small": b"hi\n"})
    srv = _server(ctx, root)
    time.sleep(0.2)
    base = rss_kb(srv.pid)
    slow = [connect(srv.addr, rcvbuf=4096) for _ in range(8)]
    for s in slow:
        s.sendall(b"big.bin 0 %d\n" % size)
    time.sleep(1.0)
    grown = rss_kb(srv.pid) - base
    fresh = connect(srv.addr)
    fresh.sendall(b"small 0 3\n")
    check(recv_exact(fresh, 13, timeout=2 * ctx.factor, what="fresh") == b"HDR 3\nhi\nEND\n",
          "a fresh client is served during the downloads")
    fresh.close()
    if not ctx.asan:
        check(grown < 8 * 1024, f"RSS grew {grown} KiB with 8 stalled 64 MiB downloads")
    ctx.log(f"8 stalled downloads of {size >> 20} MiB: RSS +{grown} KiB")
    want = hashlib.sha256(_answer(data, 0, size)).hexdigest()
    for s in slow:
        h = hashlib.sha256()
        left = len(b"HDR %d\n" % size) + size + 4
        while left:
            chunk = s.recv(min(left, 1 << 20))
            check(chunk, "download cut")
            h.update(chunk)
            left -= len(chunk)
        check(h.hexdigest() == want, "a download differs")
        s.close()
    srv.assert_alive()


def test_sendfile_file_cut_short_closes(ctx):
    """The file shrinks under a download: the connection ends (a response
    promised whole is never padded), the worker goes on serving."""
    data = random.Random(3).randbytes(8 << 20)
    root = _root(ctx, {"shrink.bin": data, "small": b"hi\n"})
    srv = _server(ctx, root)
    s = connect(srv.addr, rcvbuf=4096)
    s.sendall(b"shrink.bin 0 %d\n" % len(data))
    head = recv_exact(s, 64 << 10, what="first bytes")
    os.truncate(os.path.join(root, "shrink.bin"), 1 << 20)
    got = bytearray(head)
    s.settimeout(10 * ctx.factor)
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    hdr = b"HDR %d\n" % len(data)
    check(len(got) < len(hdr) + len(data), f"got {len(got)} bytes: the cut was padded")
    body = bytes(got[len(hdr):])
    cut = 1 << 20
    check(body[:cut] == data[:min(cut, len(body))], "bytes before the new end differ")
    # Past the new end: bytes that left by sendfile before the truncate
    # went as page-cache references, and truncating zeroes the part of a
    # large folio past the end while the socket still holds it (nginx's
    # sendfile shows the same).  So each page there is the file's old
    # bytes or zeros, never anything else.
    for off in range(cut, len(body), 4096):
        page = body[off:off + 4096]
        check(page == data[off:off + len(page)] or page == bytes(len(page)),
              f"bytes at {off} past the new end are neither the old file nor zeros")
    s.close()
    c = connect(srv.addr)
    c.sendall(b"small 0 3\n")
    check(recv_exact(c, 13, what="after") == b"HDR 3\nhi\nEND\n", "served after the cut")
    c.close()


def test_sendfile_abandoned_downloads_close_their_fds(ctx):
    """Clients that leave mid-download (reset or plain close): the files
    queued for them are closed with the connection."""
    root = _root(ctx, {"big.bin": b"x" * (16 << 20)})
    srv = _server(ctx, root)
    socks = []
    for i in range(20):
        s = connect(srv.addr, rcvbuf=4096)
        s.sendall(b"big.bin 0 %d\n" % (16 << 20) * 3)
        socks.append(s)
    recv_exact(socks[0], 4096, what="some bytes")
    check(wait_for(lambda: _open_files(srv, "big.bin") == 20, 3 * ctx.factor),
          f"{_open_files(srv, 'big.bin')} of 20 downloads hold the file open")
    for i, s in enumerate(socks):
        if i % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    check(wait_for(lambda: _open_files(srv, "big.bin") == 0, 5 * ctx.factor),
          f"{_open_files(srv, 'big.bin')} fds still on the file after the clients left")
    srv.assert_alive()


def _direct_bytes(s):
    s.sendall(b"STATS\n")
    line = b""
    while not line.endswith(b"\n"):
        line += s.recv(64)
    return int(line.split()[1])


def test_sendfile_from_disk_then_page_cache(ctx):
    """A file whose pages were dropped from the cache is read through the
    ring (a page-cache miss never runs sendfile on the worker's thread);
    once cached, the whole range goes by sendfile, no buffer of ours.
    Byte-exact both ways, and with a pipelined answer after it."""
    data = random.Random(5).randbytes(6 << 20)
    root = _root(ctx, {"cold.bin": data})
    path = os.path.join(root, "cold.bin")
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    srv = _server(ctx, root)
    s = connect(srv.addr)
    s.settimeout(10 * ctx.factor)
    before = _direct_bytes(s)
    req = b"cold.bin 0 %d\n" % len(data)
    s.sendall(req + req[:-1] + b"\n")
    want = _answer(data, 0, len(data))
    check(recv_exact(s, len(want), what="cold download") == want, "cold download differs")
    check(recv_exact(s, len(want), what="warm download") == want, "second download differs")
    after = _direct_bytes(s)
    check(after - before < 2 * len(data),
          f"{after - before} of {2 * len(data)} bytes by sendfile: the cold pages were not read")
    print(f"    [{ctx.name}] cold then warm: {after - before} of {2 * len(data)} bytes by sendfile")
    s.sendall(req)
    check(recv_exact(s, len(want), what="cached download") == want, "cached download differs")
    cached = _direct_bytes(s) - after
    check(cached == len(data), f"{cached} of {len(data)} cached bytes by sendfile")
    s.close()
