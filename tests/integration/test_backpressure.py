"""Send backpressure: clients that send a lot and never read cannot make the
server's memory grow without bound (spec item 3)."""

import selectors
import time

from harness import (ECHO_LUA, PatternStream, assert_clients_ok, check, connect,
                     echo_clients, make_pool, read_back, run_clients)

MB = 1 << 20


def _push_until_stalled(socks, streams, quota, stall_s, timeout):
    """Send on every socket until each has sent quota bytes or made no
    progress for stall_s seconds.  Returns bytes sent per socket."""
    sent = [0] * len(socks)
    last = [time.monotonic()] * len(socks)
    live = set(range(len(socks)))
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_WRITE, i)
    deadline = time.monotonic() + timeout
    try:
        while live and time.monotonic() < deadline:
            now = time.monotonic()
            for i in list(live):
                if now - last[i] > stall_s:
                    live.discard(i)
                    sel.unregister(socks[i])
            if not live:
                break
            for key, _ in sel.select(0.1):
                i = key.data
                try:
                    k = socks[i].send(streams[i].get(sent[i], min(1 << 17, quota - sent[i])))
                except BlockingIOError:
                    continue
                if k:
                    sent[i] += k
                    last[i] = time.monotonic()
                if sent[i] >= quota:
                    live.discard(i)
                    sel.unregister(socks[i])
    finally:
        sel.close()
    return sent


def test_backpressure_bounded_memory(ctx):
    srv = ctx.server(ECHO_LUA, args=["--workers", "2", "--high-water", str(MB),
                                     "--low-water", str(256 << 10)])
    pool = make_pool(ctx.rng)
    # Warm up (buffers, Lua state, allocator) before the baseline.
    warm = echo_clients(srv.addr, ctx.rng, 20, 10 * MB, pool=pool, prefix="warm")
    assert_clients_ok(run_clients(warm, 30 * ctx.factor), warm, "warm-up clients")
    time.sleep(0.3)
    rss0, hwm0 = srv.mem_kb()

    n_hogs, quota = 4, int(50 * MB * ctx.volume)
    streams = [PatternStream(pool, ctx.rng.randrange(len(pool))) for _ in range(n_hogs)]
    hogs = [connect(srv.addr) for _ in range(n_hogs)]
    try:
        sent = _push_until_stalled(hogs, streams, quota, 1.0 * ctx.factor, 60 * ctx.factor)
        ctx.log(f"hogs pushed {[round(s / MB, 1) for s in sent]} MB before stalling")
        rss1, hwm1 = srv.mem_kb()

        # Meanwhile the server serves others normally.
        others = echo_clients(srv.addr, ctx.rng, 20, int(20 * MB * ctx.volume), pool=pool,
                              max_msg=256 << 10, prefix="other")
        t0 = time.monotonic()
        assert_clients_ok(run_clients(others, 30 * ctx.factor), others,
                          "clients served while the hogs were stalled")
        ctx.log(f"others served in {time.monotonic() - t0:.1f}s")
        rss2, hwm2 = srv.mem_kb()
        growth = max(rss1, rss2) - rss0
        peak = max(hwm1, hwm2) - max(hwm0, rss0)
        ctx.log(f"RSS {rss0 // 1024} -> {rss1 // 1024} -> {rss2 // 1024} MB, "
                f"HWM {hwm0 // 1024} -> {max(hwm1, hwm2) // 1024} MB")
        limit_kb = 64 * 1024
        check(growth < limit_kb,
              f"server RSS grew by {growth // 1024} MB (>= 64 MB) while {n_hogs} clients that never "
              f"read pushed {sum(sent) // MB} MB: backpressure not working")
        check(peak < limit_kb,
              f"server peak RSS (VmHWM) grew by {peak // 1024} MB (>= 64 MB) during the test")
        check(all(s < quota for s in sent) or sum(sent) < 64 * MB,
              f"the server accepted all {quota // MB} MB from each non-reading client "
              f"({[s // MB for s in sent]} MB) without stopping its reads")

        # Now the hogs read: every byte they sent comes back, in order
        # (reads resume below --low-water).
        errors = read_back(hogs, streams, sent, timeout=60 * ctx.factor)
        check(not errors, "after backpressure, the echo was incomplete or wrong:\n  "
              + "\n  ".join(errors[:6]))
    finally:
        for s in hogs:
            s.close()
    srv.assert_alive()


test_backpressure_bounded_memory.time_limit = 180


def test_hogs_cannot_starve_tiny_ring(ctx):
    """Non-reading clients whose echo is queued cannot pin every receive
    buffer of a tiny ring: other connections are still served, and the hogs
    get everything back once they read."""
    srv = ctx.server(ECHO_LUA, args=["--workers", "1", "--buffers", "8", "--buffer-size", "4096"])
    pool = make_pool(ctx.rng)
    n_hogs = 12
    streams = [PatternStream(pool, ctx.rng.randrange(len(pool))) for _ in range(n_hogs)]
    hogs = [connect(srv.addr) for _ in range(n_hogs)]
    try:
        sent = _push_until_stalled(hogs, streams, int(40 * MB * ctx.volume), 1.0 * ctx.factor,
                                   60 * ctx.factor)
        ctx.log(f"hogs pushed {[round(s / MB, 1) for s in sent]} MB before stalling")
        others = echo_clients(srv.addr, ctx.rng, 10, 2 * MB, pool=pool, max_msg=128 << 10,
                              prefix="other")
        assert_clients_ok(run_clients(others, 20 * ctx.factor), others,
                          "clients served while hogs hold their echo")
        errors = read_back(hogs, streams, sent, timeout=60 * ctx.factor)
        check(not errors, "hogs' echo incomplete or wrong:\n  " + "\n  ".join(errors[:6]))
    finally:
        for s in hogs:
            s.close()
    srv.assert_alive()
