"""The HTTP client (ringline.http.client, driven by tests/scripts/httpc.lua)
against scripts/http.lua, nginx and the test upstream: GET/HEAD/POST with
string and slice bodies, Content-Length, chunked and to-the-close bodies,
streaming, redirects (off by default), keep-alive reuse, timeouts and
refused connects."""

import os
import shutil
import subprocess

import socket

from harness import REPO, SCRIPTS, EnvCtx, Server, check, connect, free_port, recv_line, wait_for
from http_upstream import Upstream

HTTPC_LUA = os.path.join(SCRIPTS, "httpc.lua")


def _port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def _client(ctx):
    srv = Server(ctx, script=HTTPC_LUA, args=["--workers", "1"])
    ctx.servers.append(srv)
    srv.start()
    return connect(srv.addr)


def _ask(sock, line, timeout=20.0):
    sock.sendall(line.encode() + b"\n")
    return recv_line(sock, timeout).decode().rstrip("\n")


def test_http_client_against_test_upstream(ctx):
    up = Upstream("u")
    s = _client(ctx)
    base = f"http://{up.addr}"
    check(_ask(s, f"get {base}/hello") == "status 200 len 12 body hello from u", "GET")
    got = _ask(s, f"get {base}/chunked")
    check(got == "status 200 len 40 body chunk 0|chunk 1|chunk 2|chunk 3|chunk 4|", f"chunked: {got}")
    check(_ask(s, f"get {base}/close") == "status 200 len 3 body bye", "body to the close")
    check(_ask(s, f"head {base}/big?n=5000") == "status 200 len 0", "HEAD has no body")
    got = _ask(s, f"post {base}/echo 100000")
    check(got == f"status 200 len 100000 sum {100000 * 120}", f"POST: {got}")
    s.sendall(f"postslice {base}/echo\n".encode() + b"SLICE")
    got = recv_line(s, 20).decode().rstrip("\n")
    check(got == "status 200 body SLICE", f"a slice as the body: {got}")
    got = _ask(s, f"get {base}/redirect")
    check(got.startswith("status 302 "), f"redirects are not followed by default: {got}")
    got = _ask(s, f"get {base}/redirect 3")
    check(got == "status 200 len 12 body hello from u", f"followed: {got}")
    got = _ask(s, f"stream {base}/big?n=3000000")
    check(got.startswith("status 200 len 3000000 pieces "), f"streamed: {got}")
    check(_ask(s, f"timeout {base}/slow?ms=1500 200") == "err timeout", "read timeout")
    got = _ask(s, f"connect_refused http://127.0.0.1:{free_port()}/")
    check(got == "err unknown command", "(unknown commands answer)")
    got = _ask(s, f"get http://127.0.0.1:{free_port()}/")
    check(got.startswith("err ") and "refused" in got, f"refused: {got}")
    check(_ask(s, "get ftp://example.com/").startswith("err bad uri scheme: ftp"),
          "another scheme: a clear error (https: test_tls_client.py)")
    check(_ask(s, "get nonsense").startswith("err bad uri"), "bad uri")
    before = up.connections
    got = _ask(s, f"many {base}/hello 50")
    check(got.startswith("ok 50 reused "), got)
    reused = int(got.split()[-1])
    check(reused >= 48 and up.connections - before <= 2,
          f"keep-alive: {got}, {up.connections - before} new upstream connections")
    # The upstream closes its idle connections: the stale pooled one is
    # retried on a new connection.
    up.stop()
    up2 = Upstream("u2")
    got = _ask(s, f"get http://{up2.addr}/hello")
    check(got == "status 200 len 13 body hello from u2", got)


def test_http_client_against_http_lua(ctx):
    srv = Server(EnvCtx(ctx, {}), script=os.path.join(REPO, "scripts", "http.lua"),
                 args=["--workers", "1"])
    ctx.servers.append(srv)
    srv.start()
    s = _client(ctx)
    base = f"http://127.0.0.1:{srv.port}"
    check(_ask(s, f"get {base}/") == "status 200 len 12 body hello world|", "GET /")
    got = _ask(s, f"post {base}/echo 5000")
    check(got == f"status 200 len 5000 sum {5000 * 120}", f"POST /echo: {got}")
    got = _ask(s, f"get {base}/nope")
    check(got.startswith("status 404 "), got)
    got = _ask(s, f"many {base}/ 30")
    check(got in ("ok 30 reused 29", "ok 30 reused 30"), f"keep-alive against http.lua: {got}")


def test_http_client_against_nginx(ctx):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    check(nginx is not None, "nginx not found (make deps installs nginx-light)")
    d = os.path.join(ctx.tmpdir, "nginx")
    os.makedirs(d, exist_ok=True)
    os.chmod(ctx.tmpdir, 0o755)
    os.chmod(d, 0o755)
    with open(os.path.join(d, "big.bin"), "wb") as f:
        f.write(b"n" * 2000000)
    os.chmod(os.path.join(d, "big.bin"), 0o644)
    port = free_port()
    temps = "".join(f"{t}_temp_path {d}/{t};" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = (f"daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;"
            "events { worker_connections 256; }"
            f"http {{ access_log off; {temps} server {{ listen 127.0.0.1:{port};"
            f" location /big.bin {{ root {d}; }}"
            " location /r { return 301 /; }"
            " location / { default_type text/plain; return 200 \"nginx hello\\n\"; } } }")
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(conf)
    proc = subprocess.Popen([nginx, "-p", d, "-c", os.path.join(d, "nginx.conf"), "-e",
                             os.path.join(d, "error.log")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        check(wait_for(lambda: _port_open(port), 10), "nginx did not start")
        s = _client(ctx)
        base = f"http://127.0.0.1:{port}"
        check(_ask(s, f"get {base}/") == "status 200 len 12 body nginx hello|", "GET")
        got = _ask(s, f"get {base}/big.bin")
        check(got.startswith("status 200 len 2000000 body nnnn"), got)
        got = _ask(s, f"get {base}/r 1")
        check(got == "status 200 len 12 body nginx hello|", f"redirect: {got}")
        got = _ask(s, f"many {base}/ 30")
        check(got in ("ok 30 reused 29", "ok 30 reused 30"), f"keep-alive against nginx: {got}")
    finally:
        proc.terminate()
        proc.wait(10)
