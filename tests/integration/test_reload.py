"""Hot reload: SIGHUP, --watch, the all-or-nothing vote, state migration,
--check.

Every test copies tests/scripts/reload/ to its own temp dir and rewrites the
copies there (marked lines "-- @NAME", injection points "-- @inject-..."), so
the repository's scripts are never touched.
"""

import collections
import os
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import threading
import time
import traceback

from harness import REPO, check, connect, fail, recv_exact, recv_line, sanitizer_in, wait_for

SRC_DIR = os.path.join(REPO, "tests", "scripts", "reload")

RE_LOADING = re.compile(r"reload (\d+): loading (\S+) in (\d+) worker\(s\)")
RE_SWITCHED = re.compile(r"reload (\d+): all (\d+) worker\(s\) switched in ([\d.]+) ms")
RE_REJECTED = re.compile(r"reload (\d+) rejected \((.*?)\): every worker keeps the old code "
                         r"\(([\d.]+) ms\)")
RE_CHANGE = re.compile(r"--watch: change seen under (\S+)")
RE_FAILED = re.compile(r"\bw(\d+) error: reload failed: (.*)")


# --------------------------------------------------------------------------
# Script copies

class Scripts:
    """A private copy of tests/scripts/reload/ that tests may rewrite."""

    def __init__(self, ctx):
        self.dir = os.path.join(ctx.tmpdir, "scripts")
        shutil.copytree(SRC_DIR, self.dir)
        self.n = 0

    def path(self, name):
        return os.path.join(self.dir, name)

    def read(self, name):
        with open(self.path(name)) as f:
            return f.read()

    def save(self, name, text):
        """Editor-style save: write a temp file in the same directory (its
        name does not end in .lua), then rename it over the target."""
        p = self.path(name)
        self.n += 1
        tmp = os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.{os.getpid()}.{self.n}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, p)


def set_marked(text, name, lua_value):
    """Replace the value on the line marked "-- @name"."""
    pat = re.compile(r"^(\s*(?:local\s+)?" + re.escape(name) + r"\s*=\s*)(.*?)(,?)(\s*-- @"
                     + re.escape(name) + r")\s*$", re.M)
    out, n = pat.subn(lambda m: m.group(1) + lua_value + m.group(3) + m.group(4), text)
    if n != 1:
        raise AssertionError(f"marker @{name} found {n} times in the script template")
    return out


def inject(text, marker, code):
    """Put code (one or more lines) where the "-- @marker" line is.  Returns
    (new_text, line number of the first line of code)."""
    lines = text.split("\n")
    idx = [i for i, ln in enumerate(lines) if ln.strip() == f"-- @{marker}"]
    if len(idx) != 1:
        raise AssertionError(f"marker @{marker} found {len(idx)} times in the script template")
    i = idx[0]
    indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
    lines[i:i + 1] = [indent + c for c in code.split("\n")]
    return "\n".join(lines), i + 1


def lua_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------
# The server's reload log

class ReloadLog:
    def __init__(self, ctx, server):
        self.ctx = ctx
        self.srv = server

    def text(self):
        return self.srv.stderr()

    def count(self, regex):
        return len(regex.findall(self.text()))

    def outcome(self, n, text=None):
        """('switched', ms, '') or ('rejected', ms, why) for round n, or None."""
        text = text if text is not None else self.text()
        for m in RE_SWITCHED.finditer(text):
            if int(m.group(1)) == n:
                return ("switched", float(m.group(3)), "")
        for m in RE_REJECTED.finditer(text):
            if int(m.group(1)) == n:
                return ("rejected", float(m.group(3)), m.group(2))
        return None

    def wait_round(self, n, timeout=None, expect=None):
        """Wait for round n to be decided; with expect, fail on the other
        outcome.  Returns (outcome, ms, why)."""
        timeout = timeout or 10.0 * self.ctx.factor
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            res = self.outcome(n, text)
            if res:
                break
            if not self.srv.alive():
                fail(f"server died waiting for reload {n}: exit {self.srv.proc.returncode}; "
                     f"{self.srv.stderr_tail()}")
            if time.monotonic() > deadline:
                fail(f"reload {n} not decided within {timeout:.0f}s "
                     f"(loading lines: {len(RE_LOADING.findall(text))}); {self.srv.stderr_tail()}")
            time.sleep(0.003)
        if expect and res[0] != expect:
            fail(f"reload {n} was {res[0]} ({res[2]}), expected {expect}; {self.srv.stderr_tail(25)}")
        return res

    def round_text(self, n):
        """The log from round n's "loading" line on."""
        text = self.text()
        for m in RE_LOADING.finditer(text):
            if int(m.group(1)) == n:
                return text[m.start():]
        return ""

    def failures(self, n):
        """(worker, message) for every 'reload failed' line logged since
        round n started."""
        return [(int(m.group(1)), m.group(2)) for m in RE_FAILED.finditer(self.round_text(n))]

    def settle(self, quiet=0.4):
        """Wait until no new reload starts for `quiet` seconds (beyond the
        100 ms --watch debounce)."""
        last = self.count(RE_LOADING)
        t = time.monotonic()
        while time.monotonic() - t < quiet:
            time.sleep(0.05)
            now = self.count(RE_LOADING)
            if now != last:
                last, t = now, time.monotonic()
        return last


# --------------------------------------------------------------------------
# A blocking line client for svc.lua

class Client:
    def __init__(self, ctx, srv, name="client", rcvbuf=None):
        self.ctx = ctx
        self.srv = srv
        self.name = name
        self.sock = connect(srv.addr, timeout=5.0 * ctx.factor, rcvbuf=rcvbuf)
        self.worker = None
        self.count = 0          # expected conn.state.count

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def line(self, what=None, timeout=None):
        b = recv_line(self.sock, timeout or 10.0 * self.ctx.factor,
                      what=what or f"a reply on {self.name}")
        return b.decode("utf-8", "replace").rstrip("\n")

    def ask(self, req, timeout=None):
        self.send(req + "\n")
        return self.line(f"the reply to {req!r} on {self.name}", timeout)

    def close(self):
        self.sock.close()


def parse_reply(line):
    """'v1 count conn=3 total=5 gen=1 w=0' -> ('v1', 'count', {...})."""
    parts = line.split(" ")
    kv = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    return parts[0], (parts[1] if len(parts) > 1 else ""), kv


def open_clients(ctx, srv, n, want_workers=1, limit=48):
    """n clients (more, up to limit, until want_workers distinct workers
    serve them); each learns its worker from 'info'."""
    cl = []
    while len(cl) < n or (len({c.worker for c in cl}) < want_workers and len(cl) < limit):
        c = Client(ctx, srv, f"conn{len(cl)}")
        ver, _, kv = parse_reply(c.ask("info"))
        c.worker = int(kv["w"])
        cl.append(c)
    if len({c.worker for c in cl}) < want_workers:
        ctx.note(f"{len(cl)} connections all landed on workers {sorted({c.worker for c in cl})}")
    return cl


def svc_server(ctx, scripts, workers=2, watch=False, extra=()):
    args = ["--workers", str(workers)] + (["--watch"] if watch else []) + list(extra)
    srv = ctx.server(script=scripts.path("svc.lua"), args=args)
    return srv, ReloadLog(ctx, srv)


def expect_version(clients, version, what):
    for c in clients:
        line = c.ask(f"echo {what}")
        check(line == f"{version} echo {what}",
              f"{c.name} (worker {c.worker}) {what}: expected {version!r}, got {line!r}")


def check_counts(clients, version, gen=None):
    """'count' on each client: conn.state continues; version as expected."""
    for c in clients:
        line = c.ask("count")
        ver, cmd, kv = parse_reply(line)
        c.count += 1
        check(ver == version and cmd == "count",
              f"{c.name}: expected a {version} count reply, got {line!r}")
        check(int(kv["conn"]) == c.count,
              f"{c.name}: per-connection counter (conn.state) is {kv['conn']}, expected {c.count}: "
              f"{line!r}")
        check(int(kv["w"]) == c.worker, f"{c.name}: moved from worker {c.worker}: {line!r}")
        if gen is not None:
            check(int(kv["gen"]) == gen, f"{c.name}: gen={kv['gen']}, expected {gen}: {line!r}")


def worker_stats(ctx, srv, clients):
    """{worker: (reloads, failed)} from 'stats' on the given clients."""
    out = {}
    for c in clients:
        ver, _, kv = parse_reply(c.ask("stats"))
        out[int(kv["w"])] = (int(kv["reloads"]), int(kv["failed"]))
    return out


# --------------------------------------------------------------------------
# 1. Reloads under continuous pipelined load

RESP_RES = [
    (0, re.compile(rb"^v(\d+) #(\d+) (REQ \d+ \d+)$"), (1, 2, 3)),
    (1, re.compile(rb"^RESP\|v(\d+)\|(\d+)\|(REQ \d+ \d+)$"), (1, 2, 3)),
    (2, re.compile(rb"^\[(\d+)\] (REQ \d+ \d+) \(#(\d+)\)$"), (1, 3, 2)),
]


def parse_load_reply(line):
    for style, rx, (gv, gn, gb) in RESP_RES:
        m = rx.match(line)
        if m:
            return style, int(m.group(gv)), int(m.group(gn)), m.group(gb)
    return None


class LoadConn:
    def __init__(self, idx, sock, depth, rng):
        self.idx = idx
        self.sock = sock
        self.depth = depth
        self.rng = rng
        self.out = bytearray()
        self.pending = collections.deque()      # (seq, lowest acceptable version)
        self.next_seq = 1
        self.rbuf = bytearray()
        self.answered = 0
        self.last_version = 0
        self.versions = set()
        self.error = None


class LoadRunner(threading.Thread):
    """Connections that keep `depth` pipelined "REQ <conn> <seq>" requests in
    flight each, written in random pieces, and check every reply."""

    def __init__(self, ctx, addr, n_conns):
        super().__init__(daemon=True, name="reload-load")
        self.ctx = ctx
        self.min_version = 1       # set by the test once a reload has switched
        self.max_version = 1       # set by the test before a reload starts
        self.draining = False
        self.abort = False
        self.seen_versions = set()
        self.responses = 0
        self.crash = None
        self.conns = []
        for i in range(n_conns):
            s = connect(addr, timeout=5.0 * ctx.factor)
            s.setblocking(False)
            self.conns.append(LoadConn(i, s, ctx.rng.randint(1, 8), ctx.rng))

    def errors(self):
        return [(c.idx, c.error) for c in self.conns if c.error]

    def _fail(self, c, msg):
        if not c.error:
            c.error = msg

    def _refill(self, c):
        if self.draining:
            return
        while len(c.pending) < c.depth:
            seq = c.next_seq
            c.next_seq += 1
            c.pending.append((seq, self.min_version))
            c.out += b"REQ %d %d\n" % (c.idx, seq)

    def _check(self, c, line):
        p = parse_load_reply(bytes(line))
        if p is None:
            return self._fail(c, f"corrupted reply {bytes(line[:80])!r} "
                                 f"(after {c.answered} good replies)")
        style, ver, n, body = p
        if not c.pending:
            return self._fail(c, f"reply {bytes(line)!r} with no request outstanding (duplicate?)")
        seq, minv = c.pending.popleft()
        want = b"REQ %d %d" % (c.idx, seq)
        if body != want:
            return self._fail(c, f"reply to {body.decode()!r} where {want.decode()!r} was due "
                                 f"(missing, duplicated or reordered reply): {bytes(line)!r}")
        if n != seq:
            return self._fail(c, f"per-connection counter (conn.state) is {n} for request {seq}: "
                                 f"{bytes(line)!r}")
        if ver % 3 != style:
            return self._fail(c, f"reply format {style} does not belong to version {ver}: "
                                 f"{bytes(line)!r}")
        if ver < c.last_version:
            return self._fail(c, f"version went backwards from v{c.last_version} to v{ver}: "
                                 f"{bytes(line)!r}")
        if ver < minv:
            return self._fail(c, f"request {seq} was sent after reload to v{minv} had switched, "
                                 f"yet v{ver} answered it: {bytes(line)!r}")
        if ver > self.max_version:
            return self._fail(c, f"reply from v{ver}, which was never deployed "
                                 f"(newest: v{self.max_version}): {bytes(line)!r}")
        c.last_version = ver
        c.versions.add(ver)
        c.answered += 1
        self.seen_versions.add(ver)
        self.responses += 1

    def _read(self, c):
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            return self._fail(c, f"connection dropped ({e}) with {len(c.pending)} requests "
                                 f"outstanding, after {c.answered} replies")
        if not data:
            return self._fail(c, f"connection dropped (EOF) with {len(c.pending)} requests "
                                 f"outstanding, after {c.answered} replies")
        c.rbuf += data
        start = 0
        while True:
            nl = c.rbuf.find(b"\n", start)
            if nl < 0:
                break
            self._check(c, bytes(c.rbuf[start:nl]))
            if c.error:
                return
            start = nl + 1
        del c.rbuf[:start]
        if len(c.rbuf) > 4096:
            self._fail(c, f"reply line longer than 4 KiB: {bytes(c.rbuf[:80])!r}")

    def _write(self, c):
        # One random piece per pass, so requests reach the server split.
        r = c.rng.random()
        n = len(c.out) if r < 0.4 else c.rng.randint(1, len(c.out))
        try:
            k = c.sock.send(c.out[:n])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            return self._fail(c, f"send failed: {e}")
        del c.out[:k]

    def run(self):
        try:
            self._loop()
        except Exception:
            self.crash = traceback.format_exc()

    def _loop(self):
        sel = selectors.DefaultSelector()
        live = []
        for c in self.conns:
            sel.register(c.sock, selectors.EVENT_READ, c)
            live.append(c)
        try:
            while not self.abort:
                live = [c for c in live if not c.error]
                if self.draining and not any(c.pending for c in live):
                    return
                for c in live:
                    self._refill(c)
                busy = any(c.out for c in live)
                for key, _ in sel.select(0 if busy else 0.05):
                    c = key.data
                    if not c.error:
                        self._read(c)
                for c in live:
                    if c.out and not c.error:
                        self._write(c)
        finally:
            sel.close()


def test_reload_under_load(ctx):
    rounds = 50
    n_conns = 64 if not ctx.asan else 32
    sc = Scripts(ctx)
    base = sc.read("load.lua")
    srv = ctx.server(script=sc.path("load.lua"), args=["--workers", "2", "--watch"])
    log = ReloadLog(ctx, srv)
    load = LoadRunner(ctx, srv.addr, n_conns)
    load.start()
    t0 = time.monotonic()
    hups = saves = 0
    try:
        check(wait_for(lambda: 1 in load.seen_versions or load.errors() or load.crash,
                       10 * ctx.factor), "no replies from v1 under load")
        for k in range(1, rounds + 1):
            v = k + 1
            load.max_version = v
            if k % 2:
                # SIGHUP round: the version comes from version.txt, which
                # --watch must ignore (not .lua).
                sc.save("version.txt", f"version={v}\n")
                srv.send_signal(signal.SIGHUP)
                hups += 1
            else:
                sc.save("load.lua", set_marked(base, "VERSION", str(v)))
                saves += 1
            log.wait_round(k, expect="switched")
            text = log.text()
            check(len(RE_LOADING.findall(text)) == k,
                  f"after {k} changes there were {len(RE_LOADING.findall(text))} reloads "
                  f"(one reload per change expected; --watch saves must debounce); "
                  f"{srv.stderr_tail(20)}")
            check(len(RE_CHANGE.findall(text)) == saves,
                  f"{len(RE_CHANGE.findall(text))} '--watch: change seen' lines after {saves} "
                  f"saves of load.lua and {hups} writes of version.txt")
            load.min_version = v
            ok = wait_for(lambda: v in load.seen_versions or load.errors() or load.crash,
                          10 * ctx.factor, interval=0.002)
            if load.errors() or load.crash:
                break
            check(ok, f"no reply from v{v} within {10 * ctx.factor:.0f}s of its reload")
            time.sleep(ctx.rng.uniform(0.0, 0.05))
        t_reloads = time.monotonic() - t0
        total = log.settle()
        load.draining = True
        load.join(20 * ctx.factor)
        drained = not load.is_alive()
    finally:
        if load.is_alive():
            load.abort = True
            load.join(5)
    if load.crash:
        fail("load thread crashed:\n" + load.crash)
    check(drained, "load did not drain within the timeout: "
          f"{sum(len(c.pending) for c in load.conns)} replies outstanding")
    errs = load.errors()
    if errs:
        fail(f"{len(errs)} of {n_conns} connections failed under reloads "
             f"({load.responses} good replies):\n" +
             "\n".join(f"  conn {i}: {e}" for i, e in errs[:8]) + f"\n{srv.stderr_tail(10)}")
    text = log.text()
    switched = RE_SWITCHED.findall(text)
    check(total == rounds and len(switched) == rounds and not RE_REJECTED.search(text),
          f"{rounds} changes gave {total} reloads, {len(switched)} switched, "
          f"{len(RE_REJECTED.findall(text))} rejected")
    check(len(load.seen_versions) == rounds + 1,
          f"versions seen: {sorted(load.seen_versions)}")

    # Every connection is still there and gets the final version, with its
    # per-connection counter intact; then per-worker reload counters.
    final = rounds + 1
    workers = {}
    for c in load.conns:
        c.sock.setblocking(True)
        seq = c.next_seq
        c.sock.sendall(b"REQ %d %d\nSTATS\n" % (c.idx, seq))
        line = recv_line(c.sock, 10 * ctx.factor, what=f"the final reply on conn {c.idx}")
        p = parse_load_reply(line.rstrip(b"\n"))
        check(p and p[1] == final and p[2] == seq and p[3] == b"REQ %d %d" % (c.idx, seq),
              f"conn {c.idx}: final request answered {line!r}, expected v{final} #{seq}")
        st = recv_line(c.sock, 10 * ctx.factor, what=f"STATS on conn {c.idx}").decode()
        m = re.match(r"STATS w=(\d+) reloads=(\d+) failed=(\d+)", st)
        check(m, f"conn {c.idx}: bad STATS reply {st!r}")
        workers[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
        c.sock.close()
    for w, (ok_n, bad_n) in sorted(workers.items()):
        check(ok_n == rounds and bad_n == 0,
              f"worker {w}: stats().reloads={ok_n} reloads_failed={bad_n}, expected {rounds} and 0")
    fresh = connect(srv.addr)
    fresh.sendall(b"REQ 9999 1\n")
    line = recv_line(fresh, 10 * ctx.factor, what="a reply on a new connection")
    fresh.close()
    p = parse_load_reply(line.rstrip(b"\n"))
    check(p and p[1] == final and p[2] == 1, f"new connection got {line!r}, expected v{final} #1")
    ms = [float(m[2]) for m in switched]
    per_conn = [len(c.versions) for c in load.conns]
    ctx.note(f"{rounds} reloads ({hups} SIGHUP, {saves} --watch saves) in {t_reloads:.1f}s under "
             f"{n_conns} pipelined connections; {load.responses} replies checked; switch "
             f"median {statistics.median(ms):.2f} ms, max {max(ms):.2f} ms; versions per "
             f"connection min {min(per_conn)} max {max(per_conn)}; workers seen {sorted(workers)}")


test_reload_under_load.time_limit = 150


# --------------------------------------------------------------------------
# 2. Rejected reloads keep the old code

def _rejection_cases(base, lib_base):
    """(label, files {name: text}, expected failing workers (None: all),
    regexes the failure text must match, why-regex for the rejected line)."""
    cases = []

    t, ln = inject(base, "inject-top", "local broken = = 1")
    cases.append(("syntax error", {"svc.lua": t}, None, [rf"svc\.lua:{ln}:"], "failed"))

    t, ln = inject(base, "inject-top", "local t = nil\nlocal boom = t.field")
    cases.append(("runtime error at top level", {"svc.lua": t}, None,
                  [rf"svc\.lua:{ln + 1}:", "index"], "failed"))

    t, ln = inject(base, "inject-top", 'local nope = require "no_such_module_rl"')
    cases.append(("missing module", {"svc.lua": t}, None,
                  [rf"svc\.lua:{ln}:", "no_such_module_rl"], "failed"))

    t, ln = inject(base, "inject-init", 'error("init refuses")')
    cases.append(("init() raises", {"svc.lua": t}, None,
                  [rf"svc\.lua:{ln}:", "init refuses", "init"], "failed"))

    t, ln = inject(base, "inject-reload", 'error("reload refuses")')
    cases.append(("reload(old) raises", {"svc.lua": t}, None,
                  [rf"svc\.lua:{ln}:", "reload refuses"], "failed"))

    t, ln = inject(base, "inject-end", "M.on_data = nil")
    cases.append(("no on_data", {"svc.lua": t}, None, ["on_data"], "failed"))

    lt = set_marked(lib_base, "K", "999 +")   # "K = 999 +," : syntax error in the module
    cases.append(("syntax error in a required module", {"lib.lua": lt}, None,
                  [r"lib\.lua:\d+:"], "failed"))

    t, ln = inject(base, "inject-top",
                   'if ringline.worker_id() == 1 then error("only worker 1 refuses") end')
    cases.append(("only worker 1 fails", {"svc.lua": t}, [1],
                  [rf"svc\.lua:{ln}:", "only worker 1 refuses"], r"worker 1 failed"))
    return cases


def test_reload_rejections(ctx):
    sc = Scripts(ctx)
    base = sc.read("svc.lua")
    lib_base = sc.read("lib.lua")
    # The slow-worker case below spins 3 s in a script's top level: past the
    # default --handler-timeout (2 s), which would stop it as a runaway
    # (test_safety covers that); here it must run to its end.
    srv, log = svc_server(ctx, sc, workers=2, extra=["--handler-timeout", "10000"])
    old = open_clients(ctx, srv, 6, want_workers=2)
    check_counts(old, "v1", gen=1)
    rnd = 0
    cases = _rejection_cases(base, lib_base)
    for label, files, failing, needles, why in cases:
        for name, text in files.items():
            sc.save(name, text)
        srv.send_signal(signal.SIGHUP)
        rnd += 1
        outcome, ms, reason = log.wait_round(rnd)
        check(outcome == "rejected", f"[{label}] reload {rnd} {outcome}, expected rejected; "
                                     f"{srv.stderr_tail(20)}")
        check(re.search(why, reason), f"[{label}] rejected because {reason!r}, expected /{why}/")
        # Every failing worker logs its error (possibly after the decision).
        want = failing if failing is not None else [0, 1]
        wait_for(lambda: sorted({w for w, _ in log.failures(rnd)}) == want, 5 * ctx.factor)
        fl = log.failures(rnd)
        check(sorted({w for w, _ in fl}) == want and len(fl) == len(want),
              f"[{label}] 'reload failed' lines from workers {[w for w, _ in fl]}, expected {want}: "
              f"{log.round_text(rnd)[:1500]}")
        for w, msg in fl:
            for rx in needles:
                check(re.search(rx, msg), f"[{label}] w{w}'s error does not match /{rx}/: {msg!r}")
        # Old code on the existing connections (state intact) and new ones.
        check_counts(old, "v1", gen=1)
        expect_version(old, "v1", f"after-{rnd}")
        newc = Client(ctx, srv, f"new-after-{rnd}")
        line = newc.ask("count")
        check(line.startswith("v1 count conn=1 "), f"[{label}] new connection got {line!r}")
        newc.close()
        ctx.log(f"{label}: rejected in {ms:.2f} ms: {fl[0][1][:160]}")
        # Put the good files back before the next case.
        sc.save("svc.lua", base)
        sc.save("lib.lua", lib_base)

    # A worker too slow to answer in time (2 s) fails the vote as well; once
    # it is done loading it keeps serving the old code.
    t, _ = inject(base, "inject-top",
                  "if ringline.worker_id() == 0 then\n"
                  "  local t = os.clock() + 3\n"
                  "  while os.clock() < t do end\n"
                  "end")
    sc.save("svc.lua", set_marked(t, "VERSION", lua_str("vslow")))
    srv.send_signal(signal.SIGHUP)
    rnd += 1
    t_hup = time.monotonic()
    outcome, ms, reason = log.wait_round(rnd, timeout=15 * ctx.factor, expect="rejected")
    check("in time" in reason or "answer" in reason,
          f"slow worker: rejected because {reason!r}, expected a timeout")
    check(ms >= 1500, f"slow worker: rejected after {ms:.0f} ms, before the 2 s timeout")
    check(not log.failures(rnd), f"slow worker: unexpected failure lines {log.failures(rnd)}")
    # Wait for worker 0 to come back (its load takes ~3 s).
    w0 = [c for c in old if c.worker == 0]
    for c in w0:
        line = c.ask("echo back", timeout=15 * ctx.factor)
        check(line == "v1 echo back", f"{c.name} (worker 0) after its late load: {line!r}")
    ctx.log(f"slow worker: rejected after {ms:.0f} ms; worker 0 back after "
            f"{time.monotonic() - t_hup:.1f}s")
    check_counts(old, "v1", gen=1)
    sc.save("svc.lua", base)

    # Then a good version switches: new code everywhere, state carried over.
    sc.save("svc.lua", set_marked(base, "VERSION", lua_str("v2")))
    sc.save("lib.lua", set_marked(lib_base, "K", "222"))
    srv.send_signal(signal.SIGHUP)
    rnd += 1
    log.wait_round(rnd, expect="switched")
    check_counts(old, "v2", gen=2)
    for c in old:
        ver, _, kv = parse_reply(c.ask("info"))
        check(ver == "v2" and kv["lib"] == "222" and kv["init"] == "yes",
              f"{c.name}: after the good reload: {ver} {kv}")
    st = worker_stats(ctx, srv, old)
    for w, (ok_n, bad_n) in sorted(st.items()):
        check(ok_n == 1 and bad_n == rnd - 1,
              f"worker {w}: stats reloads={ok_n} reloads_failed={bad_n}, expected 1 and {rnd - 1}")
    for c in old:
        c.close()
    ctx.note(f"{rnd - 1} rejected reloads ({len(cases)} broken versions + a slow worker), "
             f"then one switch; workers {sorted(st)}")


test_reload_rejections.time_limit = 120


def test_reload_rejected_version_never_served(ctx):
    """Round 1: worker 1 fails at once, worker 0 is slow (0.8 s) but
    succeeds -> rejected.  Round 2 (a good version) starts while worker 0 is
    still loading round 1's version.  That version was rejected: no worker
    may ever serve it, whatever round 2 decides."""
    sc = Scripts(ctx)
    base = sc.read("svc.lua")
    srv, log = svc_server(ctx, sc, workers=2)
    cl = open_clients(ctx, srv, 8, want_workers=2)
    expect_version(cl, "v1", "start")
    t, _ = inject(base, "inject-top",
                  'if ringline.worker_id() == 1 then error("worker 1 refuses vX") end\n'
                  "if ringline.worker_id() == 0 then\n"
                  "  local t = os.clock() + 0.8\n"
                  "  while os.clock() < t do end\n"
                  "end")
    sc.save("svc.lua", set_marked(t, "VERSION", lua_str("vX")))
    srv.send_signal(signal.SIGHUP)
    log.wait_round(1, expect="rejected")
    sc.save("svc.lua", set_marked(base, "VERSION", lua_str("v2")))
    srv.send_signal(signal.SIGHUP)
    # Requests that reach worker 0 while it is still busy with round 1.
    for c in cl:
        c.send("echo during\n")
    outcome, ms, why = log.wait_round(2)
    rnd = 2
    replies = [(c, c.line(f"the reply to 'echo during' on {c.name}")) for c in cl]
    bad = [(c.name, c.worker, r) for c, r in replies if r.startswith("vX")]
    if outcome == "rejected":
        srv.send_signal(signal.SIGHUP)
        rnd = 3
        log.wait_round(rnd, expect="switched")
    after = [(c, c.ask("echo after")) for c in cl]
    bad += [(c.name, c.worker, r) for c, r in after if r.startswith("vX")]
    check(not bad, f"the rejected version vX (reload 1) was served after reload 2 "
                   f"{outcome}: {bad[:4]} -- a vote left over from reload 1 counted in reload 2?\n"
                   f"{log.round_text(1)[:1200]}")
    wrong = [(c.name, r) for c, r in after if r != "v2 echo after"]
    check(not wrong, f"after reload {rnd} switched: {wrong[:4]}")
    for c in cl:
        c.close()


test_reload_rejected_version_never_served.time_limit = 60


# --------------------------------------------------------------------------
# 3. State migration and module reloading

def test_reload_state_migration(ctx):
    sc = Scripts(ctx)
    base = sc.read("svc.lua")
    lib_base = sc.read("lib.lua")
    helper_base = sc.read("sub/helper.lua")
    srv, log = svc_server(ctx, sc, workers=2)
    cl = open_clients(ctx, srv, 6, want_workers=2)
    workers = sorted({c.worker for c in cl})
    total = {w: 0 for w in workers}
    gen = {w: 1 for w in workers}
    version = "v1"
    lib_k, helper_name = "100", "h1"

    def counts(times):
        for _ in range(times):
            for c in cl:
                line = c.ask("count")
                ver, _, kv = parse_reply(line)
                c.count += 1
                total[c.worker] += 1
                got = (ver, int(kv["conn"]), int(kv["total"]), int(kv["gen"]), int(kv["w"]))
                want = (version, c.count, total[c.worker], gen[c.worker], c.worker)
                check(got == want, f"{c.name}: 'count' gave {line!r}; expected (version, conn, "
                                   f"total, gen, worker) = {want}")

    def infos():
        for c in cl:
            line = c.ask("info")
            ver, _, kv = parse_reply(line)
            got = (ver, kv["lib"], kv["helper"], int(kv["gen"]), kv["init"])
            want = (version, lib_k, helper_name, gen[c.worker], "yes")
            check(got == want, f"{c.name}: 'info' gave {line!r}; expected (version, lib.K, "
                               f"helper.NAME, gen, init) = {want}")

    counts(2)
    infos()
    rounds = 6
    for r in range(1, rounds + 1):
        lib_k, helper_name = str(100 + r), f"h{r + 1}"
        sc.save("lib.lua", set_marked(lib_base, "K", lib_k))
        sc.save("sub/helper.lua", set_marked(helper_base, "NAME", lua_str(helper_name)))
        if r % 2:
            # Odd rounds change the script too; even rounds only its modules.
            version = f"v{r + 1}"
            sc.save("svc.lua", set_marked(base, "VERSION", lua_str(version)))
        srv.send_signal(signal.SIGHUP)
        log.wait_round(r, expect="switched")
        for w in gen:
            gen[w] += 1
        infos()
        counts(ctx.rng.randint(1, 3))
    # A new connection starts with fresh conn.state; module state continues.
    c = Client(ctx, srv, "late")
    ver, _, kv = parse_reply(c.ask("count"))
    w = int(kv["w"])
    check(ver == version and kv["conn"] == "1", f"new connection: {ver} {kv}")
    if w in total:
        check(int(kv["total"]) == total[w] + 1,
              f"new connection on worker {w}: total={kv['total']}, expected {total[w] + 1}")
    c.close()
    st = worker_stats(ctx, srv, cl)
    for w, (ok_n, bad_n) in sorted(st.items()):
        check(ok_n == rounds and bad_n == 0,
              f"worker {w}: stats reloads={ok_n} reloads_failed={bad_n}, expected {rounds} and 0")
    for c in cl:
        c.close()
    ctx.note(f"{rounds} reloads; per-worker totals {total}; per-connection counts "
             f"{[c.count for c in cl]}")


# --------------------------------------------------------------------------
# 4. --watch

def test_reload_watch_editor_save(ctx):
    sc = Scripts(ctx)
    base = sc.read("svc.lua")
    helper_base = sc.read("sub/helper.lua")
    srv, log = svc_server(ctx, sc, workers=2, watch=True)
    cl = open_clients(ctx, srv, 4, want_workers=2)
    expect_version(cl, "v1", "start")
    rnd = 0
    quiet = 0.4 * ctx.factor

    def one_reload(label, version):
        nonlocal rnd
        rnd += 1
        log.wait_round(rnd, expect="switched")
        n = log.settle(quiet)
        text = log.text()
        seen = len(RE_CHANGE.findall(text))
        check(n == rnd and seen == rnd,
              f"[{label}] {n} reloads and {seen} '--watch: change seen' lines after {rnd} saves "
              f"(expected exactly one per save); {srv.stderr_tail(12)}")
        check(RE_CHANGE.findall(text)[-1] == sc.dir,
              f"[{label}] change seen under {RE_CHANGE.findall(text)[-1]!r}, expected {sc.dir!r}")
        expect_version(cl, version, f"after-{rnd}")

    # Editor save: temp file in the same directory, renamed over the script.
    for i in range(2, 5):
        v = f"v{i}"
        sc.save("svc.lua", set_marked(base, "VERSION", lua_str(v)))
        one_reload(f"rename save {i}", v)

    # vim-like save: move the original to a backup, write anew, drop the backup.
    p = sc.path("svc.lua")
    os.rename(p, p + "~")
    with open(p, "w") as f:
        f.write(set_marked(base, "VERSION", lua_str("v5")))
    os.unlink(p + "~")
    one_reload("backup-and-write save", "v5")

    # In-place rewrite in two chunks, 20 ms apart (within the debounce).
    text = set_marked(base, "VERSION", lua_str("v6"))
    with open(p, "w") as f:
        f.write(text[:len(text) // 2])
        f.flush()
        time.sleep(0.02)
        f.write(text[len(text) // 2:])
    one_reload("in-place save in two writes", "v6")

    # A module in a subdirectory.
    sc.save("sub/helper.lua", set_marked(helper_base, "NAME", lua_str("h-watch")))
    one_reload("sub/helper.lua save", "v6")
    for c in cl:
        ver, _, kv = parse_reply(c.ask("info"))
        check(kv["helper"] == "h-watch", f"{c.name}: helper.NAME={kv['helper']} after its save")

    # Files that are not .lua: no reload.
    before = log.count(RE_LOADING)
    for name in ("notes.txt", "svc.lua.bak", ".svc.lua.swp", "svc.lua~", "sub/data.json",
                 "4913"):
        with open(sc.path(name), "w") as f:
            f.write("not lua\n")
    os.rename(sc.path("notes.txt"), sc.path("notes2.txt"))
    os.unlink(sc.path("4913"))
    time.sleep(0.5 * ctx.factor)
    after = log.count(RE_LOADING)
    check(after == before, f"saving non-.lua files caused {after - before} reload(s); "
                           f"{srv.stderr_tail(8)}")
    expect_version(cl, "v6", "non-lua")
    for c in cl:
        c.close()


# --------------------------------------------------------------------------
# 5. --check

def test_reload_check(ctx):
    sc = Scripts(ctx)
    base = sc.read("svc.lua")

    def run(path):
        try:
            p = subprocess.run([ctx.bin, "--check", path], cwd=REPO, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=10 * ctx.factor, env=ctx.server_env())
        except subprocess.TimeoutExpired:
            fail(f"ringline --check {path} did not exit")
        err = p.stderr.decode("utf-8", "replace")
        if sanitizer_in(err):
            fail(f"sanitizer report from --check {path}:\n{err[:3000]}")
        return p.returncode, p.stdout.decode("utf-8", "replace"), err

    for name in ("svc.lua", "load.lua", "bench.lua"):
        rc, out, err = run(sc.path(name))
        check(rc == 0, f"--check {name}: exit {rc}, want 0; stderr {err.strip()[:300]!r}")
        check(out.strip() == f"{sc.path(name)}: ok", f"--check {name} printed {out!r}")

    t1, ln1 = inject(base, "inject-top", "local x = = 2")
    t2, ln2 = inject(base, "inject-top", "local t = nil\nlocal y = t.field")
    t3, ln3 = inject(base, "inject-top", 'local m = require "no_such_module_rl"')
    for label, text, needles in (("syntax error", t1, [rf"bad\.lua:{ln1}:"]),
                                 ("top-level error", t2, [rf"bad\.lua:{ln2 + 1}:"]),
                                 ("missing module", t3, [rf"bad\.lua:{ln3}:", "no_such_module_rl"])):
        sc.save("bad.lua", text)
        rc, out, err = run(sc.path("bad.lua"))
        check(rc == 2, f"--check ({label}): exit {rc}, want 2; stderr {err.strip()[:300]!r}")
        check(": ok" not in out, f"--check ({label}) said ok: {out!r}")
        for rx in needles:
            check(re.search(rx, err), f"--check ({label}): stderr does not match /{rx}/: "
                                      f"{err.strip()[:400]!r}")


# --------------------------------------------------------------------------
# 6. Half-received requests and queued replies across a reload

def test_reload_partial_request(ctx):
    sc = Scripts(ctx)
    base = sc.read("svc.lua")
    srv, log = svc_server(ctx, sc, workers=2)
    cl = open_clients(ctx, srv, 8, want_workers=2)
    parts = []
    for i, c in enumerate(cl[:6]):
        full = f"echo a3-{i}"
        cut = (1, 2, 4, 5, 7, len(full) - 1)[i]
        parts.append((c, full[:cut], full[cut:]))
        c.send(f"echo a1-{i}\necho a2-{i}\n{full[:cut]}")
        for k in (1, 2):
            line = c.line()
            check(line == f"v1 echo a{k}-{i}", f"{c.name}: before the reload got {line!r}")
    # Replies queued in the server (the client does not read): 8 MiB each,
    # far more than the small receive buffers take.
    big_n = (8 << 20) + 7
    bigs = [Client(ctx, srv, f"big{i}", rcvbuf=16384) for i in range(3)]
    for c in bigs:
        c.send(f"big {big_n}\n")
    time.sleep(0.2)
    sc.save("svc.lua", set_marked(base, "VERSION", lua_str("v2")))
    srv.send_signal(signal.SIGHUP)
    log.wait_round(1, expect="switched")
    for i, (c, first, rest) in enumerate(parts):
        c.send(f"{rest}\necho b-{i}\n")
        line = c.line()
        check(line == f"v2 echo a3-{i}", f"{c.name}: request split as {first!r} + {rest!r} around "
                                         f"the reload was answered {line!r}, want 'v2 echo a3-{i}'")
        line = c.line()
        check(line == f"v2 echo b-{i}", f"{c.name}: got {line!r}")
    unit = b"0123456789abcdef"
    body = unit * (big_n // 16) + unit[:big_n % 16] + b"\n"
    for c in bigs:
        head = c.line("the big reply's header")
        check(head == f"v1 big {big_n}", f"{c.name}: big reply header {head!r}")
        got = recv_exact(c.sock, len(body), 20 * ctx.factor, what="the queued big reply")
        check(got == body, f"{c.name}: the big reply queued across the reload is corrupt")
        line = c.ask("echo after-big")
        check(line == "v2 echo after-big", f"{c.name}: request after the big one: {line!r}")
    for c in cl + bigs:
        c.close()


# --------------------------------------------------------------------------
# 7. A burst of SIGHUPs

def test_reload_sighup_burst(ctx):
    sc = Scripts(ctx)
    base = sc.read("svc.lua")
    srv, log = svc_server(ctx, sc, workers=2)
    cl = open_clients(ctx, srv, 4, want_workers=2)
    for i in range(2, 22):
        sc.save("svc.lua", set_marked(base, "VERSION", lua_str(f"v{i}")))
        srv.send_signal(signal.SIGHUP)
        time.sleep(0.001)
    n = log.settle(0.5 * ctx.factor)
    # The last reload started may still be finishing (a busy machine):
    # each one that started ends, switched or rejected.
    wait_for(lambda: len(RE_SWITCHED.findall(log.text())) +
             len(RE_REJECTED.findall(log.text())) >= n, 5 * ctx.factor)
    text = log.text()
    sw, rj = len(RE_SWITCHED.findall(text)), len(RE_REJECTED.findall(text))
    check(1 <= n <= 20 and sw == n and rj == 0,
          f"20 SIGHUPs: {n} reloads, {sw} switched, {rj} rejected; {srv.stderr_tail(10)}")
    srv.assert_alive()
    check_counts(cl, "v21")
    expect_version(cl, "v21", "burst")
    for c in cl:
        c.close()
    ctx.note(f"20 SIGHUPs in a burst gave {n} reload rounds")
