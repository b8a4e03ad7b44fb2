"""Shared machinery for the ringline integration tests.

Standard library only.  Everything here has a timeout: a test can fail, but
it cannot hang the suite.
"""

import ctypes
import errno
import heapq
import itertools
import math
import os
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPTS = "tests/scripts"          # relative to REPO, the servers' cwd
ECHO_LUA = "scripts/echo.lua"

_SANITIZER_RES = [
    re.compile(r"ERROR: AddressSanitizer"),
    re.compile(r"LeakSanitizer"),
    re.compile(r"\S+:\d+(:\d+)?: runtime error:"),     # UBSan report format
]

# Every server process started by the suite, so the runner can kill leftovers.
ALL_PROCS = []


class TestFailure(AssertionError):
    pass


def fail(msg):
    raise TestFailure(msg)


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


# --------------------------------------------------------------------------
# Small helpers

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def parse_addr(url):
    """'tcp://127.0.0.1:5000', 'tls://127.0.0.1:5000' (a TLS listener: the
    TCP address) or 'unix:/path' -> (family, sockaddr)."""
    if url.startswith(("tcp://", "tls://")):
        host, _, port = url[len("tcp://"):].rpartition(":")
        host = host.strip("[]")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        return fam, (host, int(port))
    if url.startswith("unix:"):
        return socket.AF_UNIX, url[len("unix:"):]
    raise ValueError("bad address " + url)


def log_uniform(rng, lo, hi):
    """An integer in [lo, hi] whose logarithm is uniform."""
    v = int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))
    return max(lo, min(hi, v))


def connect(addr, timeout=5.0, rcvbuf=None):
    fam, sa = addr
    s = socket.socket(fam, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    try:
        s.connect(sa)
    except BaseException:
        s.close()
        raise
    if fam != socket.AF_UNIX:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(sock, n, timeout=5.0, what="data"):
    """Read exactly n bytes or fail (EOF, reset, timeout)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            fail(f"timed out after {timeout:.1f}s waiting for {what}: got {len(out)} of {n} bytes"
                 f" ({bytes(out[:60])!r}...)")
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - len(out), 1 << 20))
        except socket.timeout:
            continue
        except ConnectionResetError:
            fail(f"connection reset while waiting for {what}: got {len(out)} of {n} bytes")
        if not chunk:
            fail(f"unexpected EOF while waiting for {what}: got {len(out)} of {n} bytes"
                 f" ({bytes(out[:60])!r})")
        out += chunk
    return bytes(out)


def recv_line(sock, timeout=5.0, what="a line", limit=1 << 20):
    out = bytearray()
    deadline = time.monotonic() + timeout
    while not out.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            fail(f"timed out waiting for {what}: got {bytes(out[:100])!r}")
        sock.settimeout(left)
        try:
            b = sock.recv(1)
        except socket.timeout:
            continue
        except ConnectionResetError:
            fail(f"connection reset while waiting for {what}: got {bytes(out[:100])!r}")
        if not b:
            fail(f"unexpected EOF while waiting for {what}: got {bytes(out[:100])!r}")
        out += b
        if len(out) > limit:
            fail(f"line longer than {limit} while waiting for {what}")
    return bytes(out)


def read_until_closed(sock, timeout=5.0):
    """Read until EOF or reset.  Returns (data, how) with how in
    'eof' | 'reset' | 'timeout'."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(out), "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return bytes(out), "reset"
        if not chunk:
            return bytes(out), "eof"
        out += chunk


def echo_roundtrip(addr, payload=b"ping\n", timeout=5.0, sock=None):
    """Check that a connection (new, or sock) echoes payload."""
    own = sock is None
    s = connect(addr, timeout) if own else sock
    try:
        s.sendall(payload)
        got = recv_exact(s, len(payload), timeout, what="echo")
        check(got == payload, f"echo mismatch: sent {payload[:40]!r}, got {got[:40]!r}")
    finally:
        if own:
            s.close()


def rss_kb(pid):
    """The resident set of process pid, in KiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def ring_kb(pid, size_kb=512 * 16):
    """Resident KiB of the receive buffer rings of process pid: its
    mappings of size_kb (512 x 16 KiB, the defaults), or twice that with
    the plain buffers for decrypted bytes behind them, made MAP_NORESERVE
    (VmFlags "nr", core/rl_bufring.c).  Shared by all connections of a
    worker and bounded, so memory-per-connection checks leave it out."""
    total, size, rss = 0, None, 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                parts = line.split()
                if parts[0] == "Size:":
                    size = int(parts[1])
                elif parts[0] == "Rss:":
                    rss = int(parts[1])
                elif parts[0] == "VmFlags:" and size in (size_kb, 2 * size_kb) and "nr" in parts[1:]:
                    total += rss
    except OSError:
        pass
    return total


def stats_line(srv):
    """The k=v counters a test script answers to "stats\n" on a new
    connection (tests/scripts/runaway.lua, faults.lua), as ints."""
    s = connect(srv.addr)
    try:
        s.sendall(b"stats\n")
        line = recv_line(s, what="the stats line").decode()
    finally:
        s.close()
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def wait_for(pred, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def proc_net_tcp_queues(port):
    """Established TCP sockets on 127.0.0.1 involving port.
    Returns (server_side, client_side): lists of (tx_queue, rx_queue)."""
    srv, cli = [], []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            parts = ln.split()
            if len(parts) < 5 or parts[3] != "01":       # ESTABLISHED only
                continue
            lport = int(parts[1].rsplit(":", 1)[1], 16)
            rport = int(parts[2].rsplit(":", 1)[1], 16)
            tx, rx = (int(x, 16) for x in parts[4].split(":"))
            if lport == port:
                srv.append((tx, rx))
            elif rport == port:
                cli.append((tx, rx))
    return srv, cli


def _set_pdeathsig():
    # Make a server die with the runner even if the runner is SIGKILLed.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except Exception:
        pass


def proc_mem_kb(pid):
    """(VmRSS, VmHWM) in kB of pid plus any descendant processes."""
    pids = [pid]
    try:
        children = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        st = f.read()
                    ppid = int(st.rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        i = 0
        while i < len(pids):
            pids.extend(children.get(pids[i], []))
            i += 1
    except OSError:
        pass
    rss = hwm = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for ln in f:
                    if ln.startswith("VmRSS:"):
                        rss += int(ln.split()[1])
                    elif ln.startswith("VmHWM:"):
                        hwm += int(ln.split()[1])
        except OSError:
            pass
    return rss, hwm


# --------------------------------------------------------------------------
# Server processes

class EnvCtx:
    """Stands in for the test's ctx when a server needs extra environment
    variables; everything else is the ctx's."""

    def __init__(self, ctx, extra):
        self._ctx = ctx
        self._extra = dict(extra or {})

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def server_env(self):
        env = self._ctx.server_env()
        env.update(self._extra)
        return env


class Server:
    _seq = itertools.count(1)

    def __init__(self, ctx, script=None, builtin=None, listen=None, args=(),
                 drain_timeout_ms=5000, name=None, probe=None):
        self.ctx = ctx
        self.probe = probe      # addresses to wait for, if not the --listen ones
        self.script = script
        self.builtin = builtin
        self.listen = list(listen) if listen is not None else [f"tcp://127.0.0.1:{free_port()}"]
        self.args = [str(a) for a in args]
        self.drain_timeout_ms = drain_timeout_ms
        n = next(Server._seq)
        self.name = name or f"server{n}"
        self.stderr_path = os.path.join(ctx.tmpdir, f"{self.name}.stderr")
        self.stdout_path = os.path.join(ctx.tmpdir, f"{self.name}.stdout")
        self.proc = None
        self.returncode = None
        self.checked = False

    @property
    def addrs(self):
        return [parse_addr(a) for a in (self.listen or self.probe or [])]

    @property
    def addr(self):
        return self.addrs[0]

    @property
    def port(self):
        return self.addrs[0][1][1]

    @property
    def pid(self):
        return self.proc.pid

    def cmd(self):
        c = [self.ctx.bin]
        for a in self.listen:
            c += ["--listen", a]
        if self.drain_timeout_ms is not None and "--drain-timeout" not in self.args:
            c += ["--drain-timeout", str(self.drain_timeout_ms)]
        c += self.args
        if self.builtin:
            c += ["--builtin", self.builtin]
        if self.script:
            c.append(self.script)
        return c

    def start(self, ready=True):
        self._err = open(self.stderr_path, "wb")
        self._out = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(self.cmd(), cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=self._err,
                                     env=self.ctx.server_env(), preexec_fn=_set_pdeathsig)
        ALL_PROCS.append(self.proc)
        if ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=None):
        timeout = timeout or 5.0 * self.ctx.factor
        deadline = time.monotonic() + timeout
        for addr in self.addrs:
            while True:
                if self.proc.poll() is not None:
                    fail(f"server exited with code {self.proc.returncode} during startup: "
                         f"{self.stderr_tail()}")
                try:
                    s = connect(addr, timeout=1.0)
                    s.close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        fail(f"server not accepting on {addr} after {timeout:.0f}s: "
                             f"{self.stderr_tail()}")
                    time.sleep(0.02)
        # One worker's socket accepting is not all of them: main logs
        # "serving" once every worker is set up (SO_REUSEPORT spreads
        # connections only over sockets already bound).  Only at info.
        if "--log-level" in self.args:
            return
        while b" serving " not in self._stderr_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return
            time.sleep(0.02)

    def _stderr_bytes(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self):
        if not self.alive():
            fail(f"server died (exit code {self.proc.returncode}{_sig_name(self.proc.returncode)}): "
                 f"{self.stderr_tail()}")

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Signal and wait.  Returns the exit code; kills and fails when the
        server does not exit in time."""
        if self.proc.poll() is None:
            if timeout is None:
                timeout = (self.drain_timeout_ms or 5000) / 1000.0 + 5.0 * self.ctx.factor
            self.proc.send_signal(sig)
            if self.wait(timeout) is None:
                dump = self.thread_dump()
                self.kill()
                fail(f"server did not exit within {timeout:.1f}s of {signal.Signals(sig).name}; "
                     f"killed: {self.stderr_tail()}{dump}")
        self.returncode = self.proc.returncode
        return self.returncode

    def thread_dump(self, limit=120):
        """Backtraces of every server thread (gdb, if installed), for
        failures where the server hangs."""
        import shutil
        if not self.alive() or not shutil.which("gdb"):
            return ""
        try:
            p = subprocess.run(["gdb", "-p", str(self.pid), "-batch", "-nx",
                                "-ex", "thread apply all bt 25"],
                               capture_output=True, text=True, timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            return ""
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith(("Thread", "#"))]
        return "\nthread dump:\n      " + "\n      ".join(lines[:limit])

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def close_files(self):
        for f in (getattr(self, "_err", None), getattr(self, "_out", None)):
            if f:
                f.close()

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_tail(self, n=15):
        lines = self.stderr().splitlines()
        if not lines:
            return "(stderr empty)"
        tail = lines[-n:]
        return "stderr tail:\n      " + "\n      ".join(tail)

    def sanitizer_report(self):
        text = self.stderr()
        for r in _SANITIZER_RES:
            m = r.search(text)
            if m:
                i = text.rfind("\n", 0, m.start()) + 1
                return "\n".join(text[i:].splitlines()[:25])
        return None

    def mem_kb(self):
        return proc_mem_kb(self.pid)


def _sig_name(rc):
    if rc is not None and rc < 0:
        try:
            return f" = {signal.Signals(-rc).name}"
        except ValueError:
            pass
    return ""


def sanitizer_in(text):
    for r in _SANITIZER_RES:
        if r.search(text):
            return True
    return False


# --------------------------------------------------------------------------
# The stream engine: many non-blocking client connections in one thread.

class StreamClient:
    """One client connection that sends a plan of buffers and checks that
    what it reads back is exactly the expected byte stream.

    sends     list of buffers to send, each written in random-sized pieces
    expected  list of buffers whose concatenation is the expected reply
              stream (default: sends, i.e. an echo)
    gates     gates[i]: bytes that must have been received before sends[i]
              starts (lockstep request/response); default all 0 (pipelined)
    end       'close'        close once everything is sent and received
              'eof'          then the server must close (EOF, not reset)
              'server_close' the server must close the connection (EOF or
                             reset); what arrived must be a prefix of
                             expected of at least expect_min bytes
              'rst'          abort with a RST right after the last byte is
                             sent (whatever arrived must be a prefix)
    shut_wr   shutdown(SHUT_WR) after the last byte is sent
    """

    def __init__(self, name, addr, sends, expected=None, gates=None, rng=None,
                 piece=(1, 65536), pause_prob=0.0, pause_s=(0.0, 0.003),
                 shut_wr=False, end="close", expect_min=0, start_delay=0.0,
                 rcvbuf=None):
        self.name = name
        self.addr = addr
        if gates is None:
            gates = [0] * len(sends)
        pairs = [(memoryview(s).cast("B"), g) for s, g in zip(sends, gates) if len(s)]
        self.sends = [p[0] for p in pairs]
        self.gates = [p[1] for p in pairs]
        if expected is None:
            expected = self.sends
        self.expected = [memoryview(e).cast("B") for e in expected if len(e)]
        self.send_total = sum(len(s) for s in self.sends)
        self.expect_total = sum(len(e) for e in self.expected)
        self.rng = rng or random.Random()
        self.piece = piece
        self.pause_prob = pause_prob
        self.pause_s = pause_s
        self.shut_wr = shut_wr
        self.end = end
        self.expect_min = expect_min
        self.start_delay = start_delay
        self.rcvbuf = rcvbuf
        # state
        self.sock = None
        self.connecting = False
        self.started = False
        self.finished = False
        self.error = None
        self.paused = False
        self.send_i = 0
        self.send_off = 0
        self.sent = 0
        self.sent_all = False
        self.exp_i = 0
        self.exp_off = 0
        self.received = 0
        self.mask = 0
        self.close_how = None
        self.hold = False       # Engine barrier: no sending until all connected

    def pick_piece(self):
        lo, hi = self.piece
        if lo == hi:
            return lo
        return log_uniform(self.rng, lo, hi)

    def want_write(self):
        if self.connecting:
            return True
        if self.sent_all or self.paused or self.finished or self.hold:
            return False
        return self.received >= self.gates[self.send_i]

    def status(self):
        return (f"sent {self.sent}/{self.send_total}, received {self.received}/{self.expect_total}"
                f"{', connecting' if self.connecting else ''}{', paused' if self.paused else ''}")

    def consume(self, mv, n):
        """Compare n received bytes against the expected stream.  Returns an
        error string or None."""
        pos = 0
        exp = self.expected
        while pos < n:
            if self.exp_i >= len(exp):
                extra = bytes(mv[pos:min(n, pos + 40)])
                return (f"received unexpected bytes past the expected {self.expect_total}: "
                        f"{extra!r}... ({self.status()})")
            seg = exp[self.exp_i]
            m = min(len(seg) - self.exp_off, n - pos)
            got = mv[pos:pos + m]
            want = seg[self.exp_off:self.exp_off + m]
            if got != want:
                return self._mismatch(bytes(got), bytes(want), self.received)
            pos += m
            self.received += m
            self.exp_off += m
            if self.exp_off == len(seg):
                self.exp_i += 1
                self.exp_off = 0
        return None

    def _mismatch(self, got, want, base):
        k = next(i for i in range(len(got)) if got[i] != want[i])
        off = base + k
        # Which expected buffer (message) does the offset fall in?
        acc, msg = 0, 0
        for i, e in enumerate(self.expected):
            if acc + len(e) > off:
                msg = i
                break
            acc += len(e)
        where = ""
        probe = got[k:k + 32]
        if len(probe) >= 8:
            whole = b"".join(bytes(e) for e in self.expected)
            at = whole.find(probe)
            if at >= 0:
                where = (f"; the received bytes are found at expected offset {at} "
                         f"(delta {at - off:+d}: {'data lost/skipped' if at > off else 'data repeated/reordered'})")
            else:
                where = "; the received bytes appear nowhere in this connection's stream"
        return (f"data mismatch at stream offset {off} (message {msg}, offset {off - acc} in it): "
                f"expected {want[k:k + 16].hex()} got {got[k:k + 16].hex()}{where} ({self.status()})")


class Engine:
    def __init__(self, clients, timeout, trigger=None, barrier=False):
        self.clients = clients
        # barrier: no client sends until every client is connected, so all
        # connections are really open at the same time.
        self.barrier = barrier
        self.unconnected = len(clients)
        self.open = self.peak_open = 0
        if barrier:
            for c in clients:
                c.hold = True
        # trigger: (bytes, fn): call fn() once, when that many bytes have
        # been received in all (to act on the server in mid-traffic).
        self.trigger = trigger
        self.total_received = 0
        self.timeout = timeout
        self.sel = selectors.DefaultSelector()
        self.timers = []
        self.seq = itertools.count()
        self.buf = bytearray(1 << 18)
        self.mv = memoryview(self.buf)
        self.active = 0
        self.errors = []

    def run(self):
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        for c in self.clients:
            heapq.heappush(self.timers, (t0 + c.start_delay, next(self.seq), c, "start"))
        self.active = len(self.clients)
        try:
            while self.active:
                now = time.monotonic()
                while self.timers and self.timers[0][0] <= now:
                    _, _, c, kind = heapq.heappop(self.timers)
                    if c.finished:
                        continue
                    if kind == "start":
                        self._start(c)
                    elif kind == "unpause":
                        c.paused = False
                        self._update(c)
                if not self.active:
                    break
                if now >= deadline:
                    for c in self.clients:
                        if not c.finished:
                            self._finish(c, f"timed out after {self.timeout:.0f}s ({c.status()})")
                    break
                wait = min(deadline - now, 0.2)
                if self.timers:
                    wait = max(0.0, min(wait, self.timers[0][0] - now))
                if not self.sel.get_map():
                    time.sleep(wait)
                    continue
                for key, mask in self.sel.select(wait):
                    c = key.data
                    if c.finished:
                        continue
                    if c.connecting:
                        if mask & (selectors.EVENT_WRITE | selectors.EVENT_READ):
                            self._connected(c)
                        continue
                    if mask & selectors.EVENT_READ:
                        self._readable(c)
                    if not c.finished and mask & selectors.EVENT_WRITE:
                        self._writable(c)
        finally:
            for c in self.clients:
                if not c.finished:
                    self._finish(c, c.error or "aborted")
            self.sel.close()
        return self.errors

    # -- per client
    def _start(self, c):
        c.started = True
        fam, sa = c.addr
        s = socket.socket(fam, socket.SOCK_STREAM)
        c.sock = s
        s.setblocking(False)
        if c.rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, c.rcvbuf)
        if fam != socket.AF_UNIX:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = s.connect_ex(sa)
        if rc == errno.EAGAIN and fam == socket.AF_UNIX:
            # unix listen backlog full: retry shortly
            s.close()
            c.sock = None
            heapq.heappush(self.timers, (time.monotonic() + 0.005, next(self.seq), c, "start"))
            return
        if rc not in (0, errno.EINPROGRESS):
            return self._finish(c, f"connect failed: {os.strerror(rc)}")
        c.connecting = True
        c.mask = selectors.EVENT_READ | selectors.EVENT_WRITE
        self.sel.register(s, c.mask, c)

    def _connected(self, c):
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return self._finish(c, f"connect failed: {os.strerror(err)}")
        c.connecting = False
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        self._connected_one()
        if not c.sends:
            self._all_sent(c)
        if not c.finished:
            self._update(c)

    def _all_sent(self, c):
        c.sent_all = True
        if c.end == "rst":
            # Abort: close with SO_LINGER {1, 0} so the server gets a RST,
            # possibly in the middle of sending the echo.
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return self._finish(c)
        if c.shut_wr:
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                if c.end != "server_close":
                    return self._finish(c, f"shutdown(SHUT_WR) failed: {e}")
        if c.end == "close" and c.received == c.expect_total:
            self._finish(c)

    def _update(self, c):
        if c.finished:
            return
        m = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.want_write() else 0)
        if m != c.mask:
            c.mask = m
            self.sel.modify(c.sock, m, c)

    def _readable(self, c):
        try:
            n = c.sock.recv_into(self.buf)
        except (BlockingIOError, InterruptedError):
            return
        except (ConnectionResetError, BrokenPipeError):
            if c.end == "server_close":
                c.close_how = "reset"
                return self._server_closed(c)
            return self._finish(c, f"connection reset by the server ({c.status()})")
        if n == 0:
            if c.end == "server_close":
                c.close_how = "eof"
                return self._server_closed(c)
            if c.end == "eof" and c.received == c.expect_total:
                c.close_how = "eof"
                return self._finish(c)
            return self._finish(c, f"unexpected EOF from the server ({c.status()})")
        err = c.consume(self.mv, n)
        if err:
            return self._finish(c, err)
        self.total_received += n
        if self.trigger and self.total_received >= self.trigger[0]:
            fn = self.trigger[1]
            self.trigger = None
            fn()
        if c.end == "close" and c.sent_all and c.received == c.expect_total:
            return self._finish(c)
        self._update(c)

    def _server_closed(self, c):
        if c.received < c.expect_min:
            return self._finish(c, f"server closed ({c.close_how}) before sending the expected "
                                   f"{c.expect_min} bytes ({c.status()})")
        self._finish(c)

    def _writable(self, c):
        for _ in range(4):
            if not c.want_write():
                break
            seg = c.sends[c.send_i]
            n = min(len(seg) - c.send_off, c.pick_piece())
            try:
                k = c.sock.send(seg[c.send_off:c.send_off + n])
            except (BlockingIOError, InterruptedError):
                break
            except (BrokenPipeError, ConnectionResetError) as e:
                if c.end == "server_close":
                    c.sent_all = True          # stop sending, wait for the close
                    break
                return self._finish(c, f"send failed: {e} ({c.status()})")
            c.sent += k
            c.send_off += k
            if c.send_off == len(seg):
                c.send_i += 1
                c.send_off = 0
                if c.send_i == len(c.sends):
                    self._all_sent(c)
                    if c.finished:
                        return
                    break
            if k < n:
                break
            if c.pause_prob and c.rng.random() < c.pause_prob:
                c.paused = True
                heapq.heappush(self.timers, (time.monotonic() + c.rng.uniform(*c.pause_s),
                                             next(self.seq), c, "unpause"))
                break
        self._update(c)

    def _connected_one(self):
        self.unconnected -= 1
        if self.barrier and self.unconnected == 0:
            self.barrier = False
            for o in self.clients:
                o.hold = False
                if not o.finished and o.sock is not None and not o.connecting:
                    self._update(o)

    def _finish(self, c, err=None):
        if c.finished:
            return
        if c.connecting or not c.started or c.sock is None:
            self._connected_one()       # never connected: release the barrier
        else:
            self.open -= 1
        c.finished = True
        self.active -= 1
        if c.sock is not None:
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
        if err:
            c.error = err
            self.errors.append((c.name, err))


def run_clients(clients, timeout, trigger=None, barrier=False, stats=None):
    e = Engine(clients, timeout, trigger, barrier)
    errors = e.run()
    if stats is not None:
        stats["peak_open"] = e.peak_open
        stats["received"] = e.total_received
    return errors


def assert_clients_ok(errors, clients, what="clients"):
    if errors:
        lines = [f"{len(errors)} of {len(clients)} {what} failed:"]
        for name, err in errors[:6]:
            lines.append(f"  {name}: {err}")
        if len(errors) > 6:
            lines.append(f"  ... and {len(errors) - 6} more")
        fail("\n".join(lines))


# --------------------------------------------------------------------------
# Test data

POOL_SIZE = 3 << 20


def make_pool(rng, size=POOL_SIZE, no_b=False):
    data = rng.randbytes(size)
    if no_b:
        # Never let a chunk start with "boom" or "oops" by accident.
        data = data.replace(b"b", b"c").replace(b"o", b"p")
    return memoryview(data)


def echo_clients(addr, rng, n_conns, budget, max_msg=1 << 20, msgs=(1, 5),
                 pool=None, prefix="conn", piece=(1, 65536), pause_prob=0.05,
                 lockstep_ratio=0.5, **kw):
    """n_conns echo clients, each with a few log-uniform sized messages
    (1 B .. max_msg) written in log-uniform pieces, total volume <= budget."""
    if pool is None:
        pool = make_pool(rng)
    plans = [[log_uniform(rng, 1, max_msg) for _ in range(rng.randint(*msgs))]
             for _ in range(n_conns)]
    total = sum(map(sum, plans))
    # Trim to the budget: drop messages (keeping one per conn), then halve.
    order = [(i, j) for i, p in enumerate(plans) for j in range(len(p))]
    rng.shuffle(order)
    for i, j in order:
        if total <= budget:
            break
        if sum(1 for x in plans[i] if x) > 1 and plans[i][j]:
            total -= plans[i][j]
            plans[i][j] = 0
    while total > budget:
        i = max(range(n_conns), key=lambda k: max(plans[k]))
        j = plans[i].index(max(plans[i]))
        half = plans[i][j] // 2
        total -= plans[i][j] - half
        plans[i][j] = half
    clients = []
    for i, sizes in enumerate(plans):
        sizes = [s for s in sizes if s]
        sends, gates, acc = [], [], 0
        lockstep = rng.random() < lockstep_ratio
        for s in sizes:
            off = rng.randrange(0, len(pool) - s + 1)
            sends.append(pool[off:off + s])
            gates.append(acc if lockstep else 0)
            acc += s
        clients.append(StreamClient(f"{prefix}{i}({'lockstep' if lockstep else 'pipelined'},"
                                    f"{len(sizes)} msgs,{acc} B)", addr, sends, gates=gates,
                                    rng=random.Random(rng.getrandbits(64)), piece=piece,
                                    pause_prob=pause_prob, **kw))
    return clients


class PatternStream:
    """An endless byte stream: the pool repeated from a start offset."""

    def __init__(self, pool, start):
        self.pool = pool
        self.start = start % len(pool)

    def get(self, pos, n):
        p = (self.start + pos) % len(self.pool)
        if p + n <= len(self.pool):
            return self.pool[p:p + n]
        first = len(self.pool) - p
        return bytes(self.pool[p:]) + bytes(self.pool[:n - first])


def read_back(socks, streams, counts, timeout, expect_eof=False):
    """Read counts[i] bytes from each socks[i] (non-blocking ok), comparing
    against streams[i] (PatternStream); optionally then require EOF.
    Returns a list of error strings."""
    sel = selectors.DefaultSelector()
    got = [0] * len(socks)
    done = [False] * len(socks)
    errors = []
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    buf = bytearray(1 << 18)
    mv = memoryview(buf)
    deadline = time.monotonic() + timeout

    def finish(i, err=None):
        done[i] = True
        sel.unregister(socks[i])
        if err:
            errors.append(f"client {i}: {err}")

    try:
        while not all(done):
            left = deadline - time.monotonic()
            if left <= 0:
                for i in range(len(socks)):
                    if not done[i]:
                        finish(i, f"timed out: received {got[i]} of {counts[i]} bytes")
                break
            for key, _ in sel.select(min(left, 0.2)):
                i = key.data
                try:
                    n = socks[i].recv_into(buf)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    finish(i, f"connection reset after {got[i]} of {counts[i]} bytes")
                    continue
                if n == 0:
                    if got[i] == counts[i] and expect_eof:
                        finish(i)
                    else:
                        finish(i, f"EOF after {got[i]} of {counts[i]} bytes")
                    continue
                if got[i] + n > counts[i]:
                    finish(i, f"received {got[i] + n - counts[i]} bytes more than the {counts[i]} sent")
                    continue
                want = streams[i].get(got[i], n)
                if mv[:n] != want:
                    k = next(j for j in range(n) if buf[j] != want[j])
                    finish(i, f"data mismatch at offset {got[i] + k}")
                    continue
                got[i] += n
                if got[i] == counts[i] and not expect_eof:
                    finish(i)
    finally:
        sel.close()
    return errors
