"""Script safety: --handler-timeout stops runaway handlers (compiled loops
included), --lua-memory caps a worker's Lua heap; the rest keeps serving."""

import os
import re
import signal
import subprocess
import threading
import time

from harness import (REPO, SCRIPTS, EnvCtx, Server, check, connect, fail, free_port,
                     read_until_closed, recv_line, stats_line, wait_for)

RUNAWAY_LUA = f"{SCRIPTS}/runaway.lua"


def _line_of(needle, path=RUNAWAY_LUA):
    with open(os.path.join(REPO, path)) as f:
        for n, line in enumerate(f, 1):
            if needle in line:
                return n
    raise AssertionError(f"{needle!r} not in {path}")


def _server(ctx, args=(), env=None, **kw):
    s = Server(EnvCtx(ctx, env or {}), script=kw.pop("script", RUNAWAY_LUA),
               args=list(args), **kw)
    ctx.servers.append(s)
    s.start()
    return s


class Echoers:
    """n connections that echo numbered lines in rounds, in a thread, and
    record when each round completes."""

    def __init__(self, srv, n):
        self.socks = [connect(srv.addr) for _ in range(n)]
        self.rounds = 0
        self.error = None
        self.done_at = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._t.start()
        return self

    def _run(self):
        try:
            while not self._stop.is_set():
                msg = f"round {self.rounds}\n".encode()
                for s in self.socks:
                    s.sendall(msg)
                for i, s in enumerate(self.socks):
                    got = recv_line(s, timeout=20, what=f"echo {self.rounds} on conn {i}")
                    if got != msg:
                        raise AssertionError(f"conn {i}: got {got!r}, sent {msg!r}")
                self.rounds += 1
                self.done_at.append(time.monotonic())
        except Exception as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self):
        self._stop.set()
        self._t.join(30)
        for s in self.socks:
            s.close()
        if self.error:
            fail(f"echoing connections failed: {self.error}")
        return self.rounds


def test_runaway_on_data_stopped_others_served(ctx):
    """A compiled infinite loop, a counting loop and a loop that swallows
    errors with its own pcall, each in on_data on one connection, while 100
    other connections of the same (single) worker keep echoing."""
    timeout_ms = 400
    srv = _server(ctx, ["--workers", "1", "--handler-timeout", timeout_ms])
    cases = [("spin", "local function spin"), ("count", "for i = 1, 1e15"),
             ("swallow", None)]
    echo = Echoers(srv, 100).start()
    wait_for(lambda: echo.rounds >= 3 or echo.error, 10 * ctx.factor)
    for n, (cmd, needle) in enumerate(cases, 1):
        before = echo.rounds
        bad = connect(srv.addr)
        t0 = time.monotonic()
        bad.sendall(cmd.encode() + b"\n")
        rest, how = read_until_closed(bad, timeout=10 * ctx.factor)
        dt = time.monotonic() - t0
        bad.close()
        check(rest == b"" and how in ("eof", "reset"),
              f"{cmd}: the runaway's connection got {rest!r} ({how})")
        # The process was not lost: the echoers keep going afterwards.
        check(wait_for(lambda: echo.rounds >= before + 3 or echo.error, 10 * ctx.factor),
              f"{cmd}: echo rounds stopped at {echo.rounds} after the runaway")
        pat = (rf"conn \d+ \(127\.0\.0\.1:\d+\): stopped: handler timeout: ran (\d+) ms, "
               rf"longer than --handler-timeout {timeout_ms} ms; stopped at "
               rf"{re.escape(RUNAWAY_LUA)}:(\d+)")
        wait_for(lambda: len(re.findall(pat, srv.stderr())) >= n, 5 * ctx.factor)
        found = re.findall(pat, srv.stderr())
        check(len(found) == n, f"{cmd}: {len(found)} runaway log lines, want {n}: "
                               f"{srv.stderr_tail()}")
        ran, line = int(found[-1][0]), int(found[-1][1])
        # The watchdog's own figure: within the timeout and one scan period
        # (a tenth of it), and a scheduling hiccup.
        check(timeout_ms <= ran <= timeout_ms * 1.5 + 100 * ctx.factor,
              f"{cmd}: stopped after {ran} ms, want about {timeout_ms}")
        if needle:
            want = _line_of(needle)
            check(line == want, f"{cmd}: stopped at line {line}, want {want}")
        ctx.log(f"{cmd}: closed after {dt * 1000:.0f} ms, watchdog says {ran} ms, line {line}")
    rounds = echo.stop()
    st = stats_line(srv)
    check(st["timeouts"] == len(cases) and st["errors"] == len(cases),
          f"stats after {len(cases)} runaways: {st}")
    ctx.note(f"{len(cases)} runaways stopped at ~{timeout_ms} ms; 100 other connections "
             f"echoed {rounds} rounds meanwhile")


test_runaway_on_data_stopped_others_served.time_limit = 90


def test_runaway_timer_callback_cancelled(ctx):
    """A periodic timer whose callback never returns: stopped, logged, the
    timer cancelled (it would run away every period), the worker serves."""
    srv = _server(ctx, ["--workers", "1", "--handler-timeout", 300],
                  env={"RUNAWAY_TIMER": "1"})
    pat = r"timer callback stopped, periodic timer cancelled: handler timeout: ran \d+ ms"
    check(wait_for(lambda: re.search(pat, srv.stderr()), 10 * ctx.factor),
          f"no runaway timer report: {srv.stderr_tail()}")
    s = connect(srv.addr)
    s.sendall(b"after the timer\n")
    check(recv_line(s) == b"after the timer\n", "echo after the runaway timer")
    s.close()
    time.sleep(0.5)
    check(len(re.findall(pat, srv.stderr())) == 1,
          f"the cancelled timer ran away again: {srv.stderr_tail()}")
    check(stats_line(srv)["timeouts"] == 1, "one handler timeout counted")


VERSIONED = """-- a service whose version is {version!r}
local ringline = require "ringline"
return {{
  init = function()
    {init}
  end,
  on_data = function(conn, data)
    conn:send({version!r} .. " " .. data:tostring())
    return #data
  end,
}}
"""


def test_runaway_reload_init_rejected(ctx):
    """init of a new version never returns: the reload is rejected, the old
    code keeps serving, and a good version switches afterwards."""
    path = os.path.join(ctx.tmpdir, "svc.lua")

    def save(version, init=""):
        with open(path + ".tmp", "w") as f:
            f.write(VERSIONED.format(version=version, init=init))
        os.replace(path + ".tmp", path)

    save("v1")
    srv = _server(ctx, ["--workers", "2", "--handler-timeout", 300], script=path)
    old = connect(srv.addr)

    def ask(s, what):
        s.sendall(what.encode() + b"\n")
        return recv_line(s, what=what).decode()

    check(ask(old, "a") == "v1 a\n", "v1 serves")
    save("v2", "local x = 0 while true do x = x + 1 end")
    srv.send_signal(signal.SIGHUP)
    pat = r"reload failed: script \S+svc\.lua: init failed: handler timeout: ran \d+ ms.*svc\.lua:5"
    check(wait_for(lambda: len(re.findall(pat, srv.stderr())) == 2, 10 * ctx.factor),
          f"both workers report the runaway init: {srv.stderr_tail()}")
    check(wait_for(lambda: "rejected" in srv.stderr(), 5 * ctx.factor),
          f"the reload is not reported rejected: {srv.stderr_tail()}")
    check(ask(old, "b") == "v1 b\n", "old connection after the rejected reload")
    new = connect(srv.addr)
    check(ask(new, "c") == "v1 c\n", "new connection after the rejected reload")
    save("v3")
    srv.send_signal(signal.SIGHUP)
    check(wait_for(lambda: ask(new, "d") == "v3 d\n", 10 * ctx.factor),
          "a good version after the rejected one switches")
    old.close()
    new.close()


def _run_cli(ctx, args, env=None, timeout=20):
    e = ctx.server_env()
    e.update(env or {})
    p = subprocess.run([ctx.bin] + [str(a) for a in args], cwd=REPO, env=e,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout * ctx.factor)
    return p.returncode, p.stderr


def test_runaway_startup_init_exits_2(ctx):
    """At startup a runaway init (or top level) is stopped and the process
    exits 2 naming file:line; one that outgrows --lua-memory, too."""
    listen = ["--listen", f"tcp://127.0.0.1:{free_port()}"]
    rc, err = _run_cli(ctx, listen + ["--handler-timeout", 300, RUNAWAY_LUA],
                       {"RUNAWAY_INIT": "1"})
    check(rc == 2, f"runaway init: exit {rc}, want 2; {err[-500:]!r}")
    want = f"{RUNAWAY_LUA}:{_line_of('local function spin')}"
    check("init failed: handler timeout" in err and want in err,
          f"runaway init: message lacks the timeout and {want}: {err[-500:]!r}")
    listen = ["--listen", f"tcp://127.0.0.1:{free_port()}"]
    rc, err = _run_cli(ctx, listen + ["--lua-memory", "16m", RUNAWAY_LUA],
                       {"RUNAWAY_INIT_GROW": "1"})
    check(rc == 2, f"init past --lua-memory: exit {rc}, want 2; {err[-500:]!r}")
    check(re.search(r"init failed: not enough memory \(an allocation would have passed "
                    r"--lua-memory\)", err), f"init past --lua-memory: {err[-500:]!r}")


def test_lua_memory_cap_closes_the_connection(ctx):
    """A handler allocating without bound: its connection is closed, the GC
    gives the memory back, the worker and its other connections go on."""
    srv = _server(ctx, ["--workers", "1", "--lua-memory", "64m"])
    keep = connect(srv.addr)
    for i in range(3):
        bad = connect(srv.addr)
        bad.sendall(b"grow\n")
        rest, how = read_until_closed(bad, timeout=20 * ctx.factor)
        bad.close()
        check(rest == b"" and how in ("eof", "reset"),
              f"round {i}: the growing connection got {rest!r} ({how})")
        keep.sendall(b"still here\n")
        try:
            line = recv_line(keep)
        except Exception as e:
            raise AssertionError(f"round {i}: the other connection: {e}: {srv.stderr_tail()}")
        check(line == b"still here\n", f"round {i}: echo on the other connection: {line!r}")
    st = stats_line(srv)
    check(st["memory_errors"] >= 3, f"stats: {st}, want at least 3 refused allocations")
    check(st["errors"] == 3 and st["timeouts"] == 0, f"stats: {st}")
    check(0 < st["memory"] < 16 << 20, f"Lua memory after the collections: {st['memory']} bytes")
    n = len(re.findall(r"failed: not enough memory \(an allocation would have passed "
                       r"--lua-memory\)", srv.stderr()))
    check(n == 3, f"{n} memory log lines, want 3: {srv.stderr_tail()}")
    keep.close()
    ctx.note(f"3 connections past a 64 MiB cap closed; Lua heap after: {st['memory'] >> 10} KiB")


def test_sigterm_with_runaway_handler(ctx):
    """SIGTERM while a handler runs away: the watchdog stops it and the
    process exits 0 within the drain timeout plus the handler timeout."""
    drain, hto = 1000, 1000
    srv = _server(ctx, ["--workers", "1", "--handler-timeout", hto], drain_timeout_ms=drain)
    bad = connect(srv.addr)
    bad.sendall(b"spin\n")
    time.sleep(0.1)
    t0 = time.monotonic()
    rc = srv.stop(signal.SIGTERM, timeout=(drain + hto) / 1000 + 5 * ctx.factor)
    dt = time.monotonic() - t0
    bad.close()
    check(rc == 0, f"exit {rc}, want 0: {srv.stderr_tail()}")
    check(dt < (drain + hto) / 1000 + 2 * ctx.factor,
          f"exited {dt:.1f}s after SIGTERM, want within {(drain + hto) / 1000:.1f}s")
    ctx.log(f"exit {dt:.2f}s after SIGTERM")


def test_sigterm_with_handler_stuck_in_c(ctx):
    """A handler blocked in a C function cannot be stopped by a check: the
    watchdog warns, and SIGTERM still ends the process (exit 1) once the
    drain timeout, the handler timeout and a second have passed."""
    drain, hto = 500, 500
    srv = _server(ctx, ["--workers", "1", "--handler-timeout", hto], drain_timeout_ms=drain)
    srv.checked = True
    bad = connect(srv.addr)
    bad.sendall(b"block\n")
    check(wait_for(lambda: "has not reached script code" in srv.stderr(), 5 * ctx.factor),
          f"no warning about the handler stuck in C: {srv.stderr_tail()}")
    t0 = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    rc = srv.wait((drain + hto) / 1000 + 1 + 5 * ctx.factor)
    dt = time.monotonic() - t0
    bad.close()
    if rc is None:
        srv.kill()
        fail(f"still running {dt:.1f}s after SIGTERM: {srv.stderr_tail()}")
    check(rc == 1, f"exit {rc}, want 1: {srv.stderr_tail()}")
    check("did not stop within" in srv.stderr(), f"no message on the forced exit: "
                                                 f"{srv.stderr_tail()}")
    ctx.log(f"exit {rc} {dt:.2f}s after SIGTERM")


def test_safety_options_rejected(ctx):
    """Bad --handler-timeout and --lua-memory values are usage errors."""
    listen = ["--listen", f"tcp://127.0.0.1:{free_port()}"]
    for args in (["--handler-timeout", "abc"], ["--handler-timeout", "-1"],
                 ["--handler-timeout", "3600001"], ["--lua-memory", "1k"],
                 ["--lua-memory", "lots"]):
        rc, err = _run_cli(ctx, listen + args + ["scripts/echo.lua"])
        check(rc == 2, f"{args}: exit {rc}, want 2; {err[-300:]!r}")
        check(args[0] in err, f"{args}: the message does not name {args[0]}: {err[-300:]!r}")
