"""Command line: --help, --version, bad options and bad scripts (spec items 8, 10)."""

import re
import subprocess
import time

from harness import REPO, SCRIPTS, check, fail, free_port, sanitizer_in


def run_cli(ctx, args, timeout=None):
    timeout = timeout or 5.0 * ctx.factor
    t0 = time.monotonic()
    try:
        p = subprocess.run([ctx.bin] + args, cwd=REPO, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout, env=ctx.server_env())
    except subprocess.TimeoutExpired:
        fail(f"`ringline {' '.join(args)}` did not exit within {timeout:.0f}s")
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    if sanitizer_in(err):
        fail(f"sanitizer report from `ringline {' '.join(args)}`:\n{err[:3000]}")
    return p.returncode, out, err, time.monotonic() - t0


def _lines(text):
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # Sanitizer runtimes may print their own "==PID==" chatter; not ours.
    return [ln for ln in lines if not re.match(r"==\d+==", ln)]


def test_version(ctx):
    rc, out, err, _ = run_cli(ctx, ["--version"])
    check(rc == 0, f"--version exited {rc}; stderr: {err.strip()[:300]!r}")
    text = (out + err).strip()
    check(text, "--version printed nothing")
    check(re.search(r"\d+\.\d+", text), f"--version output has no version number: {text[:200]!r}")
    check(out.strip(), f"--version printed to stderr only, not stdout: {err.strip()[:200]!r}")
    check(len(_lines(text)) <= 3, f"--version printed {len(_lines(text))} lines: {text[:300]!r}")


def test_help(ctx):
    rc, out, err, _ = run_cli(ctx, ["--help"])
    check(rc == 0, f"--help exited {rc}; stderr: {err.strip()[:300]!r}")
    check(out.strip(), f"--help printed nothing on stdout (stderr: {err.strip()[:200]!r})")
    low = out.lower()
    check("usage" in low, f"--help output lacks a usage line: {out[:300]!r}")
    missing = [o for o in ("--listen", "--workers", "--buffers", "--buffer-size", "--max-conns",
                           "--high-water", "--low-water", "--max-unconsumed", "--drain-timeout",
                           "--log-level", "--builtin", "--version", "--help") if o not in out]
    check(not missing, f"--help does not mention {', '.join(missing)}")


BAD_CASES = [
    # (label, args-before-script, script, substrings: any of which must appear in the line)
    ("syntax error", [], f"{SCRIPTS}/bad_syntax.lua", ["bad_syntax.lua"]),
    ("top-level error", [], f"{SCRIPTS}/bad_toplevel_error.lua", ["kaboom at top level"]),
    ("returns a number", [], f"{SCRIPTS}/bad_not_table.lua", ["table"]),
    ("returns nothing", [], f"{SCRIPTS}/bad_no_return.lua", ["table"]),
    ("missing script", [], f"{SCRIPTS}/does_not_exist.lua", ["does_not_exist.lua"]),
    ("--workers 0", ["--workers", "0"], "scripts/echo.lua", ["workers"]),
    ("--buffers 3", ["--buffers", "3"], "scripts/echo.lua", ["buffers"]),
    ("--bogus", ["--bogus"], "scripts/echo.lua", ["bogus"]),
    ("--buffer-size junk", ["--buffer-size", "12q"], "scripts/echo.lua", ["buffer-size"]),
    ("--log-level loud", ["--log-level", "loud"], "scripts/echo.lua", ["log-level", "loud"]),
    ("--workers without value", ["--workers"], None, ["workers"]),
    ("--listen bad scheme", ["--listen", "ftp://127.0.0.1:1"], "scripts/echo.lua", ["ftp://", "listen"]),
]


def test_bad_scripts_and_options(ctx):
    problems = []
    for label, pre, script, needles in BAD_CASES:
        args = list(pre)
        if "--listen" not in args:
            args = ["--listen", f"tcp://127.0.0.1:{free_port()}"] + args
        if script:
            args.append(script)
        try:
            rc, out, err, dt = run_cli(ctx, args)
        except AssertionError as e:
            problems.append(f"[{label}] {e}")
            continue
        lines = _lines(err)
        where = f"`ringline {' '.join(args)}`"
        if rc != 2:
            problems.append(f"[{label}] {where} exited {rc}, want 2; stderr: {err.strip()[:300]!r}")
            continue
        if len(lines) != 1:
            problems.append(f"[{label}] {where}: want exactly one line on stderr, got {len(lines)}: "
                            f"{err.strip()[:400]!r}")
            continue
        if not any(n in lines[0] for n in needles):
            problems.append(f"[{label}] {where}: stderr line does not name the problem "
                            f"(expected one of {needles}): {lines[0]!r}")
        ctx.log(f"{label}: rc={rc} {dt:.2f}s {lines[0]!r}")
    if problems:
        fail(f"{len(problems)} of {len(BAD_CASES)} cases wrong:\n" + "\n".join(problems))


def test_bad_syntax_names_line(ctx):
    rc, out, err, _ = run_cli(ctx, ["--listen", f"tcp://127.0.0.1:{free_port()}",
                                    f"{SCRIPTS}/bad_syntax.lua"])
    check(rc == 2, f"exited {rc}, want 2")
    check(re.search(r"bad_syntax\.lua:[45]\b", err),
          f"syntax error message does not give file:line (bad_syntax.lua:4 or :5): {err.strip()[:300]!r}")


def test_no_script_is_usage_error(ctx):
    rc, out, err, _ = run_cli(ctx, ["--listen", f"tcp://127.0.0.1:{free_port()}"])
    check(rc == 2, f"`ringline` without a script exited {rc}, want 2; stderr {err.strip()[:300]!r}")
    check(err.strip(), "no message on stderr when the script is missing from the command line")


def test_jit_environment(ctx):
    """RINGLINE_JIT_OPT is applied (a bad flag stops startup, naming the
    variable); RINGLINE_JIT_LOG and RINGLINE_JIT_PROFILE write LuaJIT's
    trace log and the profiler's report (at stop)."""
    import os
    import signal
    import socket

    env = ctx.server_env()
    env["RINGLINE_JIT_OPT"] = "maxirconst=3000 bogus=1"
    port = free_port()
    p = subprocess.run([ctx.bin, "-w", "1", "--listen", f"tcp://127.0.0.1:{port}",
                        "scripts/echo.lua"], cwd=REPO, env=env, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=10 * ctx.factor)
    err = p.stderr.decode("utf-8", "replace")
    check(p.returncode == 2, f"a bad RINGLINE_JIT_OPT flag: exit {p.returncode}, want 2")
    check("RINGLINE_JIT_OPT" in err and "bogus=1" in err,
          f"the error does not name RINGLINE_JIT_OPT and the flag: {err.strip()[:300]!r}")

    trace_log = os.path.join(ctx.tmpdir, "jit.log")
    profile = os.path.join(ctx.tmpdir, "jit.profile")
    env["RINGLINE_JIT_OPT"] = "maxirconst=3000 hotloop=10"
    env["RINGLINE_JIT_LOG"] = trace_log
    env["RINGLINE_JIT_PROFILE"] = f"v,{profile}"
    port = free_port()
    srv = subprocess.Popen([ctx.bin, "-w", "1", "--listen", f"tcp://127.0.0.1:{port}",
                            "scripts/echo.lua"], cwd=REPO, env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10 * ctx.factor
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                check(time.monotonic() < deadline and srv.poll() is None,
                      "server with RINGLINE_JIT_* set did not start")
                time.sleep(0.05)
        with s:
            s.settimeout(5 * ctx.factor)
            # Round trips for 1.5 s: traces form, the profiler samples.
            t_end = time.monotonic() + 1.5
            i = 0
            while time.monotonic() < t_end:
                i += 1
                msg = b"ping %d\n" % i * 50
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(65536)
                    check(chunk, "echo closed the connection")
                    got += chunk
                check(got == msg, f"echo returned {got!r} for {msg!r}")
        srv.send_signal(signal.SIGTERM)
        _, err = srv.communicate(timeout=10 * ctx.factor)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    check(srv.returncode == 0, f"exit {srv.returncode} after SIGTERM: {err.decode()[-300:]!r}")
    with open(trace_log) as f:
        log = f.read()
    check("[TRACE" in log, f"RINGLINE_JIT_LOG file has no trace lines: {log[:300]!r}")
    with open(profile) as f:
        rep = f.read()
    check(re.search(r"\d+%\s+\w", rep), f"RINGLINE_JIT_PROFILE report has no percentages: {rep[:300]!r}")
