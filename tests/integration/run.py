#!/usr/bin/env python3
"""ringline integration test runner.

    python3 tests/integration/run.py [--bin build/ringline] [-k SUBSTR]... [-v]

Each test is a function test_* in one of the modules below; each starts its
own server(s) on free ports.  Prints PASS/FAIL per test and finally
"N passed, N failed"; exits 1 on any failure.

RINGLINE_ASAN=1: timeouts are stretched, volumes reduced, and a test fails
when a server's stderr shows an AddressSanitizer, LeakSanitizer or UBSan
report (servers are stopped with SIGTERM so leak checks run at exit).
"""

import argparse
import atexit
import importlib
import inspect
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import REPO, Server, TestFailure  # noqa: E402

# Run order: these first, then any other test_*.py in this directory.
MODULES = ["test_cli", "test_echo", "test_handlers", "test_lifecycle", "test_backpressure"]


class TestTimeout(Exception):
    pass


class Ctx:
    """What a test gets: the binary, scaling factors, a temp dir, an RNG and
    a factory for servers that are torn down (and checked) afterwards."""

    def __init__(self, args, name, seed):
        self.bin = args.bin
        self.asan = os.environ.get("RINGLINE_ASAN") == "1"
        self.factor = 3.0 if self.asan else 1.0     # timeouts
        self.volume = 0.5 if self.asan else 1.0     # data volumes
        self.verbose = args.verbose
        self.name = name
        self.seed = seed
        self.rng = random.Random(seed ^ zlib.crc32(name.encode()))
        self.tmpdir = tempfile.mkdtemp(prefix="rl-it-")
        self.servers = []
        self.notes = []

    def server_env(self):
        env = dict(os.environ)
        if self.asan:
            env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
            env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        return env

    def server(self, script=None, start=True, **kw):
        s = Server(self, script=script, **kw)
        self.servers.append(s)
        if start:
            s.start()
        return s

    def log(self, msg):
        if self.verbose:
            print(f"    [{self.name}] {msg}", flush=True)

    def note(self, msg):
        self.notes.append(msg)

    def teardown(self):
        """Stop every server with SIGTERM; return a list of problems."""
        problems = []
        for s in self.servers:
            if s.proc is None:
                continue
            try:
                if s.proc.poll() is None:
                    rc = s.stop(signal.SIGTERM)
                    if rc != 0:
                        problems.append(f"{s.name} exited with code {rc}{harness._sig_name(rc)} "
                                        f"on SIGTERM at teardown; {s.stderr_tail()}")
                elif s.proc.returncode < 0 and not s.checked:
                    rc = s.proc.returncode
                    problems.append(f"{s.name} died with code {rc}{harness._sig_name(rc)}; "
                                    f"{s.stderr_tail()}")
            except TestFailure as e:
                problems.append(str(e))
            finally:
                s.kill()
                s.close_files()
            rep = s.sanitizer_report()
            if rep:
                problems.append(f"sanitizer report in {s.name} stderr:\n{rep}")
        return problems

    def cleanup(self):
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def collect_tests():
    here = os.path.dirname(os.path.abspath(__file__))
    others = sorted(f[:-3] for f in os.listdir(here)
                    if f.startswith("test_") and f.endswith(".py") and f[:-3] not in MODULES)
    tests = []
    for modname in MODULES + others:
        try:
            mod = importlib.import_module(modname)
        except Exception:
            err = traceback.format_exc()

            def broken(ctx, err=err):
                raise TestFailure("cannot import the module:\n" + err)
            tests.append((f"import_{modname}", broken))
            continue
        fns = [(getattr(mod, n)) for n in dir(mod) if n.startswith("test_")]
        fns = [f for f in fns if inspect.isfunction(f) and f.__module__ == modname]
        fns.sort(key=lambda f: f.__code__.co_firstlineno)
        for f in fns:
            tests.append((f.__name__[len("test_"):], f))
    return tests


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    want = min(want, 65536) if hard == resource.RLIM_INFINITY else want
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def kill_all():
    for p in harness.ALL_PROCS:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(5)
            except Exception:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/ringline", help="server binary (default build/ringline)")
    ap.add_argument("-k", action="append", default=[], metavar="SUBSTR",
                    help="run only tests whose name contains SUBSTR (repeatable)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    ap.add_argument("--list", action="store_true", help="list tests and exit")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    tests = collect_tests()
    if args.k:
        tests = [(n, f) for n, f in tests if any(k in n for k in args.k)]
    if args.list:
        for n, _ in tests:
            print(n)
        return 0

    if not os.path.isabs(args.bin):
        cand = os.path.abspath(args.bin)
        args.bin = cand if os.path.exists(cand) else os.path.join(REPO, args.bin)
    if not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        print(f"ringline binary not found or not executable: {args.bin}", flush=True)
        print(f"0 passed, {len(tests)} failed")
        return 1

    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    nofile = raise_nofile()
    asan = os.environ.get("RINGLINE_ASAN") == "1"
    print(f"ringline integration tests: bin={args.bin} seed={seed} asan={'yes' if asan else 'no'} "
          f"nofile={nofile} tests={len(tests)}", flush=True)

    atexit.register(kill_all)

    def on_signal(signum, frame):
        kill_all()
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)

    def on_alarm(signum, frame):
        raise TestTimeout("test exceeded its overall time limit")
    signal.signal(signal.SIGALRM, on_alarm)

    passed = failed = 0
    t_suite = time.monotonic()
    for name, fn in tests:
        ctx = Ctx(args, name, seed)
        limit = int(getattr(fn, "time_limit", 120) * ctx.factor)
        t0 = time.monotonic()
        reason = None
        try:
            signal.alarm(limit)
            try:
                fn(ctx)
            finally:
                signal.alarm(0)
        except TestFailure as e:
            reason = str(e)
        except TestTimeout as e:
            reason = f"{e} ({limit}s)"
        except KeyboardInterrupt:
            ctx.teardown()
            ctx.cleanup()
            print(f"FAIL {name}: interrupted", flush=True)
            failed += 1
            break
        except Exception:
            reason = "exception in test:\n" + traceback.format_exc()
        try:
            signal.alarm(int(60 * ctx.factor))
            problems = ctx.teardown()
        except TestTimeout:
            problems = ["teardown timed out"]
        finally:
            signal.alarm(0)
            kill_all()
        if problems:
            reason = (reason + "\n" if reason else "") + "\n".join(problems)
        dt = time.monotonic() - t0
        if reason is None:
            passed += 1
            print(f"PASS {name} ({dt:.2f}s)", flush=True)
        else:
            failed += 1
            first, _, rest = reason.partition("\n")
            print(f"FAIL {name}: {first}", flush=True)
            if rest:
                print("    " + rest.replace("\n", "\n    "), flush=True)
            for s in ctx.servers:
                print(f"    server: cd {REPO} && {' '.join(s.cmd())}", flush=True)
        for n in ctx.notes:
            print(f"    note: {n}", flush=True)
        ctx.cleanup()
    print(f"suite time {time.monotonic() - t_suite:.1f}s, seed {seed}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
