#!/usr/bin/env python3
"""bench_hostile.py: what clients that pipeline requests and never read the
answers cost each server in memory, ringline beside its peers.

    python3 tests/bench/bench_hostile.py BUILD_DIR

Each row starts one server (one worker / thread, on BENCH_SERVER_CPU), opens
BENCH_CONNS connections with a small receive buffer, and for BENCH_SECONDS
writes pipelined requests on all of them as fast as the server takes them,
reading nothing.  Every 0.5 s a fresh client sends one request and must get
its answer within 2 s ("answers": how many of these probes were answered).
Reported per row: the server's RSS before, at its peak and after the
attackers closed and BENCH_SETTLE seconds passed, the growth per
connection ((peak - before) / conns), and for ringline the same growth
without its receive buffer ring (shared by all connections, at most 8 MiB
per worker, and touched as the ring's hot set grows).  The memory numbers are the point:
nothing here is timed against a target, and the exit status is 0 unless a
server could not start.

Rows (the table of issue #20):
  http GET /               ringline scripts/http.lua   nginx return 200
  http GET 1 MiB static    ringline scripts/http.lua   nginx static
  redis GET 4 KiB          ringline scripts/redis.lua  redis-server
  memcached get 4 KiB      ringline scripts/memcached.lua  memcached -t 1
  echo 64 KiB writes       ringline scripts/echo.lua
  proxy -> redis GET 4 KiB ringline scripts/proxy.lua  haproxy (tcp mode)

Environment (all optional):
  BENCH_CONNS=100 BENCH_SECONDS=5 BENCH_SETTLE=3
  BENCH_WARMUP_CONNS=10    the attack from this many connections for 1 s
                           before "before" is read (0: none): first-use
                           costs (code, JIT traces, arenas) are not a
                           connection's
  BENCH_RING_KB=8192       ringline's receive ring per worker, left out of
                           the "beyond the ring" column
  BENCH_ROWS="http static redis memcached echo proxy"
  BENCH_PEERS=1            0: ringline rows only
  BENCH_SERVER_CPU=0 BENCH_CLIENT_CPU=1
  RINGLINE_ARGS=""         extra ringline options (e.g. --high-water 64k)
"""

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from harness import ring_kb as harness_ring_kb  # noqa: E402

CONNS = int(os.environ.get("BENCH_CONNS", "100"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
SETTLE = float(os.environ.get("BENCH_SETTLE", "3"))
ROWS = os.environ.get("BENCH_ROWS", "http static redis memcached echo proxy").split()
PEERS = os.environ.get("BENCH_PEERS", "1") != "0"
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "0")
CLIENT_CPU = os.environ.get("BENCH_CLIENT_CPU", "1")
RL_EXTRA = shlex.split(os.environ.get("RINGLINE_ARGS", ""))
VALUE = b"v" * 4096
STATIC_SIZE = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    """Resident set of the process and its children (nginx's workers)."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def wait_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Srv:
    def __init__(self, name, cmd, port, env=None, cwd=REPO):
        self.name, self.port = name, port
        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, cwd=cwd,
                                     env={**os.environ, **(env or {})},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- What each row sends, and how a probe knows it was answered --------------

def http_get(path):
    return b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path


def redis_cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def answered_http(buf):
    return buf.startswith(b"HTTP/1.1 200") and b"\r\n\r\n" in buf


def answered_redis(buf):
    return buf.startswith(b"$4096\r\n") and len(buf) >= 4096 + 9


def answered_mc(buf):
    return buf.endswith(b"END\r\n")


def answered_echo(buf):
    return len(buf) >= 5


KINDS = {
    # kind: (request, probe request, probe check)
    "http": (http_get(b"/") * 64, http_get(b"/"), answered_http),
    "static": (http_get(b"/static/big.bin") * 4, http_get(b"/"), answered_http),
    "redis": (redis_cmd(b"GET", b"hostile") * 256, redis_cmd(b"GET", b"hostile"), answered_redis),
    "memcached": (b"get hostile\r\n" * 512, b"get hostile\r\n", answered_mc),
    "echo": (b"x" * 65536, b"hello", answered_echo),
    "proxy": (redis_cmd(b"GET", b"hostile") * 256, redis_cmd(b"GET", b"hostile"), answered_redis),
}


def probe(port, req, ok):
    try:
        s = socket.create_connection(("127.0.0.1", port), 2)
        s.settimeout(2)
        s.sendall(req)
        buf = b""
        deadline = time.monotonic() + 2
        while not ok(buf) and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        s.close()
        return ok(buf)
    except OSError:
        return False


RING_KB = int(os.environ.get("BENCH_RING_KB", str(512 * 16)))
WARMUP_CONNS = int(os.environ.get("BENCH_WARMUP_CONNS", "10"))


def ring_kb(srv):
    """Resident KiB of ringline's receive rings (tests/integration/harness.py
    ring_kb: the MAP_NORESERVE mappings of 512 x 16 KiB).  Shared by all
    connections and bounded whatever they do, so the per-connection figure
    leaves them out (0 for the peers)."""
    if not srv.name.startswith("ringline"):
        return 0
    return harness_ring_kb(srv.proc.pid, RING_KB)


def open_socks(srv, n):
    """n connections with a 4 KiB receive buffer, non-blocking."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", srv.port))
        s.setblocking(False)
        socks.append(s)
    return socks


def warm_up(srv, req):
    """The same attack from a few connections for a second, then closed:
    code paths run for the first time, JIT traces and the allocator's
    first arenas are one-time costs of the process, not of a connection."""
    socks = open_socks(srv, WARMUP_CONNS)
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:
        for s in socks:
            try:
                s.send(req)
            except OSError:
                pass
        time.sleep(0.005)
    for s in socks:
        s.close()
    time.sleep(0.5)


def attack(srv, kind):
    """Returns (rss before, peak, after, peak beyond the ring) in KiB,
    probes answered, probes."""
    req, preq, ok = KINDS[kind]
    pid = srv.proc.pid
    if WARMUP_CONNS:
        warm_up(srv, req)
    before = rss_kb(pid)
    before_beyond = before - ring_kb(srv)
    socks = open_socks(srv, CONNS)
    peak, answered, probes = before, 0, 0
    beyond = before_beyond
    t_end = time.monotonic() + SECONDS
    next_probe = time.monotonic() + 0.5
    while time.monotonic() < t_end:
        for s in socks:
            try:
                s.send(req)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass            # closed by the server: fine, it is bounded
        rss = rss_kb(pid)
        peak = max(peak, rss)
        beyond = max(beyond, rss - ring_kb(srv))
        if time.monotonic() >= next_probe:
            probes += 1
            answered += probe(srv.port, preq, ok)
            next_probe = time.monotonic() + 0.5
        time.sleep(0.005)
    peak = max(peak, rss_kb(pid))
    for s in socks:
        s.close()
    time.sleep(SETTLE)
    return before, peak, rss_kb(pid), beyond - before_beyond, answered, probes


# -- Servers -----------------------------------------------------------------

def ringline(build, script, port, env=None, args=()):
    cmd = [os.path.join(build, "ringline"), "--workers", "1", "--listen",
           f"tcp://127.0.0.1:{port}"] + list(args) + RL_EXTRA + [script]
    return Srv("ringline", cmd, port, env)


def nginx(tmp, port, static):
    conf = os.path.join(tmp, f"nginx-{port}.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off; worker_processes 1; pid {tmp}/nginx-{port}.pid;
error_log {tmp}/nginx-{port}.err;
events {{ worker_connections 4096; }}
http {{ access_log off;
  client_body_temp_path {tmp}/b; proxy_temp_path {tmp}/p; fastcgi_temp_path {tmp}/f;
  uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s;
  server {{ listen 127.0.0.1:{port} reuseport;
    location / {{ return 200 "hello\\n"; }}
    location /static/ {{ alias {tmp}/public/; }} }} }}
""")
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    return Srv("nginx", [exe, "-c", conf, "-p", tmp], port)


def run_row(build, tmp, row, redis_port):
    results = []
    port = free_port()
    kind = row
    if row in ("http", "static"):
        env = {"RINGLINE_HTTP_ROOT": os.path.join(tmp, "public")}
        servers = [lambda p: ringline(build, "scripts/http.lua", p, env)]
        if PEERS and (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
            servers.append(lambda p: nginx(tmp, p, row == "static"))
    elif row == "redis":
        servers = [lambda p: ringline(build, "scripts/redis.lua", p)]
        if PEERS and shutil.which("redis-server"):
            servers.append(lambda p: Srv("redis-server", [
                "redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--io-threads", "1"], p))
    elif row == "memcached":
        servers = [lambda p: ringline(build, "scripts/memcached.lua", p)]
        if PEERS and shutil.which("memcached"):
            servers.append(lambda p: Srv("memcached", [
                "memcached", "-p", str(p), "-U", "0", "-t", "1", "-l", "127.0.0.1"]
                + (["-u", "root"] if os.geteuid() == 0 else []), p))
    elif row == "echo":
        servers = [lambda p: ringline(build, "scripts/echo.lua", p)]
    elif row == "proxy":
        env = {"RINGLINE_PROXY_UPSTREAMS": f"127.0.0.1:{redis_port}"}
        servers = [lambda p: ringline(build, "scripts/proxy.lua", p, env)]
        if PEERS and shutil.which("haproxy"):
            def hap(p):
                conf = os.path.join(tmp, f"haproxy-{p}.cfg")
                with open(conf, "w") as f:
                    f.write(f"global\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 2s\n"
                            f"  timeout client 60s\n  timeout server 60s\n"
                            f"listen p\n  bind 127.0.0.1:{p}\n  server r 127.0.0.1:{redis_port}\n")
                return Srv("haproxy", ["haproxy", "-f", conf], p)
            servers.append(hap)
    else:
        sys.exit(f"bench_hostile: unknown row {row!r}")
    for make in servers:
        port = free_port()
        srv = make(port)
        try:
            if not wait_port(port, srv.proc):
                err = srv.proc.stderr.read().decode(errors="replace")[-300:] if srv.proc.poll() is not None else ""
                print(f"  {row:10s} {srv.name:13s} did not start {err}")
                continue
            if row in ("redis", "memcached"):
                seed(port, row)
            results.append((srv.name, attack(srv, kind)))
        finally:
            srv.stop()
    return results


def seed(port, row):
    s = socket.create_connection(("127.0.0.1", port), 2)
    if row == "redis":
        s.sendall(redis_cmd(b"SET", b"hostile", VALUE))
    else:
        s.sendall(b"set hostile 0 0 %d\r\n%s\r\n" % (len(VALUE), VALUE))
    s.recv(100)
    s.close()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python3 tests/bench/bench_hostile.py BUILD_DIR")
    build = os.path.abspath(sys.argv[1])
    if not os.path.exists(os.path.join(build, "ringline")):
        sys.exit(f"bench_hostile: no ringline in {build}")
    os.sched_setaffinity(0, {int(c) for c in CLIENT_CPU.split(",")})
    tmp = tempfile.mkdtemp(prefix="bench_hostile.")
    os.chmod(tmp, 0o755)
    os.makedirs(os.path.join(tmp, "public"))
    with open(os.path.join(tmp, "public", "big.bin"), "wb") as f:
        f.write(os.urandom(STATIC_SIZE))
    os.chmod(os.path.join(tmp, "public", "big.bin"), 0o644)
    print("== ringline hostile-clients benchmark ==")
    print(f"date:      {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    print(f"settings:  {CONNS} connections per row, {SECONDS:g} s of pipelined requests "
          f"never read, settle {SETTLE:g} s; server on CPU {SERVER_CPU}, clients on {CLIENT_CPU}")
    if RL_EXTRA:
        print(f"ringline:  extra options {' '.join(RL_EXTRA)}")
    redis_port, backend = free_port(), None
    if "proxy" in ROWS and shutil.which("redis-server"):
        backend = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind",
                                    "127.0.0.1", "--save", "", "--appendonly", "no"],
                                   stdout=subprocess.DEVNULL)
        wait_port(redis_port, backend)
        seed(redis_port, "redis")
    rows = []
    try:
        for row in ROWS:
            for name, (before, peak, after, grow, ans, probes) in run_row(build, tmp, row, redis_port):
                rows.append((row, name, before, peak, after, grow, ans, probes))
                ring = "" if name != "ringline" else f" ({grow / CONNS:.1f} beyond the ring)"
                print(f"  {row:10s} {name:13s} rss {before / 1024:7.1f} -> peak {peak / 1024:8.1f}"
                      f" -> after {after / 1024:8.1f} MiB; per conn "
                      f"{(peak - before) / CONNS:8.1f} KiB{ring}; answered {ans}/{probes}", flush=True)
    finally:
        if backend:
            backend.terminate()
            backend.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("row        | server        | RSS before MiB | peak MiB | after MiB | KiB per conn | beyond the ring | fresh client answered")
    print("-----------+---------------+----------------+----------+-----------+--------------+-----------------+----------------------")
    for row, name, before, peak, after, grow, ans, probes in rows:
        print(f"{row:10s} | {name:13s} | {before / 1024:14.1f} | {peak / 1024:8.1f} | "
              f"{after / 1024:9.1f} | {(peak - before) / CONNS:12.1f} | {grow / CONNS:15.1f} | {ans}/{probes}")


if __name__ == "__main__":
    main()
